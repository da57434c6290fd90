"""The executor is a pipe from the engine to the workers.

Backends differ only in transport: ``collective_rpc`` runs a worker method on every
rank, and ``execute_model`` carries one step. Everything else is built on those two,
so every worker method works on every backend.
"""

from typing import Any

from vllm.config import VllmConfig
from vllm.messages import ExecuteModelRequest, SamplerOutput


class Executor:
    def __init__(self, vllm_config: VllmConfig):
        self.config = vllm_config
        self._init_workers()

    def _init_workers(self) -> None:
        raise NotImplementedError

    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        """Runs ``Worker.<method>`` on every rank; returns the results by rank."""
        raise NotImplementedError

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        return self.collective_rpc("execute_model", (req,))[0]

    def determine_num_available_blocks(self) -> int:
        # Ranks may differ (replicated KV heads); the smallest one bounds all.
        return min(self.collective_rpc("determine_num_available_blocks"))

    def initialize_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_cache", (num_blocks,))

    def check_health(self) -> None:
        self.collective_rpc("check_health")

    def shutdown(self) -> None:
        pass

    @staticmethod
    def get_class(vllm_config: VllmConfig) -> type["Executor"]:
        backend = vllm_config.parallel_config.distributed_executor_backend
        if vllm_config.parallel_config.use_spmd_worker:
            from vllm.executor.ray_spmd_executor import RaySPMDExecutor

            return RaySPMDExecutor
        if backend == "uni":
            from vllm.executor.uniproc_executor import UniProcExecutor

            return UniProcExecutor
        if backend == "mp":
            from vllm.executor.mp_executor import MultiprocExecutor

            return MultiprocExecutor
        from vllm.executor.ray_executor import RayDriverExecutor

        return RayDriverExecutor
