"""The legacy control plane: rank 0 is a "driver worker" inside the engine process.

Each step the driver builds the model inputs and broadcasts them over
torch.distributed to ranks 1..N-1, which loop on that broadcast (see
``driver_broadcast``). Control calls go to every rank through the backend's
transport (spawned processes or Ray actors), after the driver releases the
followers from their loop. Subclasses supply only the transport.
"""

import atexit
import time
import weakref
from typing import Any

from vllm.distributed.parallel_state import check_world_group_free, get_open_port
from vllm.executor.driver_broadcast import DriverWorker, follower_loop
from vllm.executor.executor_base import (
    Executor,
    WorkerDiedError,
    WorkerMethod,
    run_worker_method,
)
from vllm.messages import ExecuteModelRequest, SamplerOutput
from vllm.worker.worker import Worker

# How long a graceful close waits on the followers before the transport kills them:
# a follower stuck in a collective must not hang the engine's exit.
CLOSE_TIMEOUT_S = 10.0
# A killed peer's sockets close before its process is reaped, so the driver's
# broken collective can come before the death shows: wait this long for it.
DEATH_GRACE_S = 2.0


class RemoteRanks:
    """Transport to ranks 1..N-1. ``submit`` starts a method on every remote rank
    and returns handles; ``wait`` returns their results in rank order, raising
    WorkerDiedError if a rank died."""

    def submit(self, method: WorkerMethod, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def wait(self, handles: Any, timeout: float | None = None) -> list[Any]:
        """Raises TimeoutError if ``timeout`` seconds pass first."""
        raise NotImplementedError

    def deaths(self) -> dict[int, tuple[int | None, str | None]]:
        """Dead ranks -> (pid, cause), for WorkerDiedError; {} while all live."""
        raise NotImplementedError

    def deaths_after(
        self, error: BaseException
    ) -> dict[int, tuple[int | None, str | None]]:
        """Dead ranks once a call failed on the driver with ``error``, waiting
        up to DEATH_GRACE_S for a death to show; {} if none does."""
        deadline = time.monotonic() + DEATH_GRACE_S
        while not (deaths := self.deaths()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return deaths

    def close(self) -> None:
        raise NotImplementedError


class _DriverGroup:
    """Everything shutdown needs, kept apart from the executor so a finalizer can
    hold it without keeping the executor alive."""

    def __init__(self, driver: DriverWorker, remote: RemoteRanks):
        self.driver = driver
        self.remote = remote
        self.loop: Any = None  # handles of the followers' follower_loop, if running
        self.closed = False
        # Why the followers could not be released from their loop, if that failed:
        # every later call would wait on them forever.
        self.stuck: BaseException | None = None

    def check_usable(self) -> None:
        if self.closed:
            raise RuntimeError("the executor is shut down")
        if self.stuck is not None:
            raise RuntimeError(
                "the worker ranks are stuck in their step loop after an earlier "
                "failure; this engine cannot go on"
            ) from self.stuck

    def stop_loop(self) -> None:
        if self.loop is not None:
            loop, self.loop = self.loop, None
            try:
                self.driver.stop_followers()
                self.remote.wait(loop, CLOSE_TIMEOUT_S)
            except BaseException as e:
                self.stuck = e
                raise

    def drain(self, handles: Any) -> None:
        """Reads (and drops) the followers' replies to a call that failed on the
        driver, so they do not answer the next one; if they never come, the
        followers are stuck in a collective the driver left."""
        try:
            self.remote.wait(handles, CLOSE_TIMEOUT_S)
        except TimeoutError as e:
            self.stuck = e
        except Exception:
            pass  # their own failure; the driver's is the one raised

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.stuck is None and not self.remote.deaths():
                self.stop_loop()
                handles = self.remote.submit("shutdown", (), {})
                self.remote.wait(handles, CLOSE_TIMEOUT_S)
        except Exception:
            pass  # the transport's close below still stops every process
        finally:
            self.driver.worker.shutdown()
            self.remote.close()


class DriverWorkerExecutor(Executor):
    def _make_remote(self, init_method: str) -> RemoteRanks:
        raise NotImplementedError

    def _master_address(self) -> str:
        return "127.0.0.1"

    def _init_workers(self) -> None:
        check_world_group_free()  # before any process starts
        init_method = f"tcp://{self._master_address()}:{get_open_port()}"
        remote = self._make_remote(init_method)
        driver = DriverWorker(Worker(self.config, 0, init_method))
        self._group = _DriverGroup(driver, remote)
        self._finalizer = weakref.finalize(self, self._group.close)
        # finalize's own exit hook was registered when the interpreter first used
        # one, so it would run after the exit hooks of libraries started since
        # (Ray's shutdown): register ours now, to close while the transport works.
        self._finalizer.atexit = False
        atexit.register(self._finalizer)
        try:
            # A rank that died while starting (say, one whose interpreter cannot
            # import vllm) would leave the driver waiting in the rendezvous
            # below; the reply proves each lives.
            remote.wait(remote.submit("get_pid", (), {}))
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
        except BaseException:
            self._finalizer()
            raise

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        g = self._group
        g.check_usable()
        g.stop_loop()
        kwargs = kwargs or {}
        handles = g.remote.submit(method, args, kwargs)
        try:
            mine = self._guard(
                lambda: run_worker_method(g.driver.worker, method, args, kwargs)
            )
        except BaseException:
            g.drain(handles)
            raise
        return [mine, *g.remote.wait(handles)]

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        g = self._group
        g.check_usable()
        if g.loop is None:
            g.loop = g.remote.submit(follower_loop, (), {})
        out = self._guard(lambda: g.driver.execute_model(req))
        self.bytes_sent = g.driver.bytes_sent
        return out

    def _guard(self, call):
        """A collective on the driver fails obscurely when a peer dies; name it."""
        try:
            return call()
        except Exception as e:
            deaths = self._group.remote.deaths_after(e)
            if deaths:
                raise WorkerDiedError(deaths) from e
            raise

    def shutdown(self) -> None:
        self._finalizer()
        atexit.unregister(self._finalizer)
