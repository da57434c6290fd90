"""One worker in the engine process, driven through the same messages and method
names the multi-process backends carry."""

from typing import Any

from vllm.executor.executor_base import Executor, WorkerMethod, run_worker_method
from vllm.worker.worker import Worker


class UniProcExecutor(Executor):
    def _init_workers(self) -> None:
        self.worker = Worker(self.config, rank=0)
        self.worker.init_device()
        self.worker.load_model()

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        return [run_worker_method(self.worker, method, args, kwargs or {})]

    def shutdown(self) -> None:
        if getattr(self, "worker", None) is not None:
            self.worker.shutdown()
            self.worker = None
