"""SPMD control plane over our shared-memory rings: every rank, rank 0 included, in
its own process; the engine process holds no model.

The engine writes each step's bytes (``STEP`` + the encoded ``ExecuteModelRequest``)
or a control call (``encode_call``) once into a broadcast ring that every rank reads
(see ``spmd_host``); the output rank's output (rank 0's, or with pipeline stages the
last stage's first rank's) comes back through its own reply ring. Waits
take timeouts, between which the engine checks that every rank lives, so a dead
rank is reported as ``WorkerDiedError`` instead of a hang. ``submit_model`` writes a
step and returns at once, so the engine may keep one step in flight.

This module holds the transport-independent executor and the mp transport (ranks
are spawned ``WorkerProcess``es); ``spmd_ray_executor`` places the ranks with Ray.
"""

import atexit
import contextlib
import pickle
import time
import weakref
from collections.abc import Callable
from typing import Any

from vllm import envs, messages
from vllm.distributed.parallel_state import get_open_port
from vllm.distributed.shm_broadcast import RingHandle, ShmRingReader, ShmRingWriter
from vllm.executor.executor_base import (
    Executor,
    StepResult,
    WorkerDiedError,
    WorkerMethod,
    describe_exit,
)
from vllm.executor.ray_utils import STEP, encode_call
from vllm.executor.spmd_host import (
    ATTACH_TIMEOUT_S,
    CALL_FAILED,
    EXIT,
    OUTPUT,
    RESULT,
    STEP_FAILED,
    serve_process,
)
from vllm.executor.worker_process import WorkerProcess
from vllm.messages import ExecuteModelRequest, SamplerOutput

Deaths = dict[int, tuple[int | None, str | None]]


class _Rings:
    """The engine's ends of the rings and a way to stop the ranks; closed once,
    by shutdown, garbage collection or interpreter exit (a finalizer holds this,
    not the executor)."""

    def __init__(self, step: ShmRingWriter):
        self.step = step
        self.replies: list[ShmRingReader] = []
        self.stop_ranks: Callable[[], None] = lambda: None
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        # A dead rank may hold the slot: then the ranks are stopped anyway.
        with contextlib.suppress(TimeoutError, OSError):
            self.step.write(EXIT, timeout=0.5)
        self.stop_ranks()
        for ring in self.replies:
            ring.close()
        self.step.close()


class SPMDRingExecutor(Executor):
    """Transports supply ``_start_ranks`` and ``_deaths``."""

    def _start_ranks(self, step: RingHandle) -> list[RingHandle]:
        """Starts every rank attached to ``step``; returns their reply rings."""
        raise NotImplementedError

    def _deaths(self) -> Deaths:
        raise NotImplementedError

    def _init_workers(self) -> None:
        pc = self.config.parallel_config
        self._poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        step = ShmRingWriter(pc.world_size, pc.mq_max_chunk_bytes, pc.mq_spin_us)
        self._rings = _Rings(step)
        self._finalizer = weakref.finalize(self, self._rings.close)
        # Close before later-registered exit hooks (Ray's) tear the ranks down.
        self._finalizer.atexit = False
        atexit.register(self._rings.close)
        self._submitted = self._received = 0  # steps written, outputs read
        self._outputs: dict[int, Any] = {}  # outputs read ahead of their caller
        self._failed = False  # a rank died or is stuck: no call can succeed
        self._output_rank = pc.output_rank  # the rank that answers steps
        try:
            handles = self._start_ranks(step.handle())
            self._rings.replies = [ShmRingReader(h, 0) for h in handles]
            step.wait_readers(ATTACH_TIMEOUT_S)
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
        except BaseException:
            self._finalizer()
            raise

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        self._check_open()
        # A step in flight answers first; keep its output for its caller.
        while self._received < self._submitted:
            self._outputs[self._received] = self._read_step()
            self._received += 1
        self._write(encode_call(method, args, kwargs or {}))
        # Every rank's reply is read before an error is raised, so none is
        # left to be taken for the next call's.
        replies = [self._read(rank) for rank in range(len(self._rings.replies))]
        failures = [r[1:].decode() for r in replies if r[:1] != RESULT]
        if failures:
            raise RuntimeError(failures[0])
        return [pickle.loads(memoryview(r)[1:]) for r in replies]

    def submit_model(self, req: ExecuteModelRequest) -> StepResult:
        self._check_open()
        frame = STEP + messages.encode(req)
        self.bytes_sent += len(frame)
        self._write(frame)
        seq, self._submitted = self._submitted, self._submitted + 1
        return lambda: self._step_output(seq)

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        return self.submit_model(req)()

    def _step_output(self, seq: int) -> SamplerOutput | None:
        while self._received <= seq:
            self._outputs[self._received] = self._read_step()
            self._received += 1
        out = self._outputs.pop(seq)
        if isinstance(out, BaseException):
            raise out
        return out

    def _read_step(self) -> SamplerOutput | None | BaseException:
        """The output rank's reply to the oldest step in flight; a failure is
        returned (raised by that step's caller), a death raised at once."""
        reply = self._read(self._output_rank, in_step=True)
        self.bytes_received += len(reply)
        # Other ranks answer a step only when it failed on them.
        for rank, ring in self._other_rings():
            if ring.ready():
                reply = self._read(rank)
        if reply[:1] == OUTPUT:
            return messages.decode_output(memoryview(reply)[1:])
        self._raise_if_dead(grace_s=1.0)
        return RuntimeError(reply[1:].decode())

    def _write(self, frame: bytes) -> None:
        while True:
            try:
                return self._rings.step.write(frame, timeout=self._poll_s)
            except TimeoutError:
                self._raise_if_dead()

    def _read(self, rank: int, in_step: bool = False) -> bytes:
        ring = self._rings.replies[rank]
        while True:
            try:
                reply = ring.read(timeout=self._poll_s)
            except TimeoutError:
                self._raise_if_dead()
                if in_step:
                    self._raise_if_peer_failed()
                continue
            except EOFError:  # a big reply cut off: its writer is gone
                self._raise_if_dead(grace_s=1.0)
                raise
            if reply[:1] in (OUTPUT, RESULT, CALL_FAILED, STEP_FAILED):
                return reply
            raise RuntimeError(f"unknown reply {reply[:1]!r} from rank {rank}")

    def _other_rings(self) -> list[tuple[int, ShmRingReader]]:
        """(rank, reply ring) of every rank but the output rank."""
        rings = enumerate(self._rings.replies)
        return [(rank, ring) for rank, ring in rings if rank != self._output_rank]

    def _raise_if_peer_failed(self) -> None:
        """A step that failed on another rank leaves the output rank waiting in
        a collective for it: it will not answer, so that failure is the step's."""
        for _, ring in self._other_rings():
            if ring.ready():
                reply = ring.read()
                self._failed = True
                raise RuntimeError(reply[1:].decode())

    def _raise_if_dead(self, grace_s: float = 0.0) -> None:
        """A failed collective may be reported by a survivor before the dead
        rank's exit shows; ``grace_s`` waits that long for it to show."""
        deadline = time.monotonic() + grace_s
        while True:
            deaths = self._deaths()
            if deaths:
                self._failed = True
                raise WorkerDiedError(deaths)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _check_open(self) -> None:
        if self._rings.closed:
            raise RuntimeError("the executor is shut down")
        if self._failed:
            raise RuntimeError("a worker rank died; this engine cannot go on")

    def shutdown(self) -> None:
        self._finalizer()


class SPMDMultiprocExecutor(SPMDRingExecutor):
    """Every rank a spawned process (``WorkerProcess``) on this machine."""

    def _start_ranks(self, step: RingHandle) -> list[RingHandle]:
        pc = self.config.parallel_config
        init_method = f"tcp://127.0.0.1:{get_open_port()}"
        self._procs = [
            WorkerProcess(
                serve_process,
                (self.config, rank, init_method, step)
                + (pc.mq_max_chunk_bytes, pc.mq_spin_us),
            )
            for rank in range(pc.world_size)
        ]
        self._rings.stop_ranks = _stopper(self._procs)
        handles = []
        for proc in self._procs:
            # A rank that cannot start (say, cannot import vllm) must not hang
            # the engine: wait for its handle while it lives.
            while not proc.conn.poll(min(self._poll_s, 0.1)):
                self._raise_if_dead()
            handles.append(proc.conn.recv())
        return handles

    def _deaths(self) -> Deaths:
        return {
            rank: (p.pid, describe_exit(p.exitcode))
            for rank, p in enumerate(getattr(self, "_procs", []))
            if not p.is_alive()
        }


def _stopper(procs: list[WorkerProcess]) -> Callable[[], None]:
    """Waits a little for ranks leaving on EXIT, then kills what remains."""

    def stop() -> None:
        deadline = time.monotonic() + 5.0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            proc.kill()
            proc.conn.close()

    return stop
