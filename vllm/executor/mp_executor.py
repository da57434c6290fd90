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
            reply = ("ok", getattr(worker, method)(*args, **kwargs))
        except BaseException as e:
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        if not _send(conn, reply):
            break  # the engine closed the pipe: it is shutting down
        if method == "shutdown":
            break
    conn.close()


def _send(conn, reply: tuple[str, Any]) -> bool:
    """False once the engine has closed the pipe."""
    try:
        conn.send(reply)
    except OSError:
        return False
    except Exception as e:  # a result that does not pickle
        return _send(conn, ("error", f"the reply could not be sent: {e!r}"))
    return True


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
        conn, proc = self.conns[i], self.procs[i]
        poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        if deadline is not None:
            poll_s = min(poll_s, 0.1)
        while not conn.poll(poll_s):
            if not proc.is_alive():
                raise RuntimeError(
                    f"worker rank {i + 1} (pid {proc.pid}) died "
                    f"(exit code {proc.exitcode})"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"worker rank {i + 1} (pid {proc.pid}) hangs")
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"worker rank {i + 1} (pid {proc.pid}) died") from e

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
