"""Legacy driver-worker executor whose ranks 1..N-1 are spawned processes, driven
over pipes."""

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from typing import Any

from vllm import envs
from vllm.config import VllmConfig
from vllm.executor.driver_executor import DriverWorkerExecutor, RemoteRanks
from vllm.worker.worker import Worker


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive the engine, even if the engine is killed."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_main(config: VllmConfig, rank: int, init_method: str, conn, parent: int):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine handles Ctrl-C
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    worker = Worker(config, rank, init_method)
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        try:
            conn.send(("ok", getattr(worker, method)(*args, **kwargs)))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        if method == "shutdown":
            break
    conn.close()


class ProcessRanks(RemoteRanks):
    def __init__(self, config: VllmConfig, init_method: str):
        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        for rank in range(1, config.parallel_config.world_size):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(config, rank, init_method, theirs, os.getpid()),
                name=f"vllm-worker-{rank}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)

    def submit(self, method: str, args: tuple, kwargs: dict) -> list[int]:
        for conn in self.conns:
            conn.send((method, args, kwargs))
        return list(range(len(self.conns)))

    def wait(self, handles: list[int]) -> list[Any]:
        return [self._recv(i) for i in handles]

    def _recv(self, i: int) -> Any:
        conn, proc = self.conns[i], self.procs[i]
        while not conn.poll(envs.VLLM_WORKER_LIVENESS_POLL_S):
            if not proc.is_alive():
                raise RuntimeError(
                    f"worker rank {i + 1} (pid {proc.pid}) died "
                    f"(exit code {proc.exitcode})"
                )
        try:
            status, value = conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"worker rank {i + 1} (pid {proc.pid}) died") from e
        if status == "error":
            raise RuntimeError(f"worker rank {i + 1} failed: {value}")
        return value

    def dead_ranks(self) -> list[int]:
        return [i + 1 for i, p in enumerate(self.procs) if not p.is_alive()]

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)


class MultiprocExecutor(DriverWorkerExecutor):
    def _make_remote(self, init_method: str) -> RemoteRanks:
        return ProcessRanks(self.config, init_method)
