"""Legacy driver-worker executor whose ranks 1..N-1 are worker processes started
by the engine, driven over pipes."""

import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from vllm import envs
from vllm.config import VllmConfig
from vllm.executor.driver_executor import DriverWorkerExecutor, RemoteRanks
from vllm.executor.executor_base import (
    WorkerDiedError,
    WorkerMethod,
    describe_exit,
    run_worker_method,
)
from vllm.executor.worker_process import WorkerProcess, send_reply
from vllm.worker.worker import Worker


def _serve(conn: Connection, config: VllmConfig, rank: int, init_method: str):
    """A remote rank: runs each (method, args, kwargs) the engine sends."""
    worker = Worker(config, rank, init_method)
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", run_worker_method(worker, method, args, kwargs))
        except BaseException as e:
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        if not send_reply(conn, reply) or method == "shutdown":
            return  # the engine closed the pipe, or asked us to stop


class ProcessRanks(RemoteRanks):
    def __init__(self, config: VllmConfig, init_method: str):
        self.poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        self.procs = [
            WorkerProcess(_serve, (config, rank, init_method))
            for rank in range(1, config.parallel_config.world_size)
        ]

    def submit(self, method: WorkerMethod, args: tuple, kwargs: dict) -> list[int]:
        for proc in self.procs:
            proc.conn.send((method, args, kwargs))
        return list(range(len(self.procs)))

    def wait(self, handles: list[int], timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        # Every reply is read before an error is raised, so the next call's
        # replies are not taken for this one's.
        replies = [self._recv(i, deadline) for i in handles]
        for i, (status, value) in zip(handles, replies):
            if status == "error":
                raise RuntimeError(f"worker rank {i + 1} failed: {value}")
        return [value for _, value in replies]

    def _recv(self, i: int, deadline: float | None) -> tuple[str, Any]:
        proc = self.procs[i]
        poll_s = self.poll_s if deadline is None else min(self.poll_s, 0.1)
        while not proc.conn.poll(poll_s):
            if not proc.is_alive():
                raise WorkerDiedError(self.deaths())
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"worker rank {i + 1} (pid {proc.pid}) hangs")
        try:
            return proc.conn.recv()
        except (EOFError, OSError) as e:
            proc.join(1.0)  # let its exit status be known
            raise WorkerDiedError(self.deaths() or {i + 1: (proc.pid, None)}) from e

    def deaths(self) -> dict[int, tuple[int | None, str | None]]:
        return {
            i + 1: (p.pid, describe_exit(p.exitcode))
            for i, p in enumerate(self.procs)
            if not p.is_alive()
        }

    def close(self) -> None:
        for proc in self.procs:
            proc.conn.close()
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            proc.kill()


class MultiprocExecutor(DriverWorkerExecutor):
    def _make_remote(self, init_method: str) -> RemoteRanks:
        return ProcessRanks(self.config, init_method)
