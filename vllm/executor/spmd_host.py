"""A rank's side of the shared-memory SPMD control plane.

Every rank reads each frame the engine writes once into the step ring (see
``vllm.distributed.shm_broadcast``) and runs it on its ``Worker``; each rank writes
its replies into a ring of its own that only the engine reads. A step's reply comes
from the output rank alone (``ParallelConfig.output_rank``: rank 0 without pipeline
stages, else the last stage's first; the others hold the same tokens and stay
silent unless the step fails on them); a control call is answered by every rank,
so ``collective_rpc`` returns each rank's result. The same host runs in a spawned
process (mp) and in a thread of a Ray actor.
"""

import contextlib
import pickle
import threading
import traceback
from typing import Any

from vllm import messages
from vllm.distributed.shm_broadcast import RingHandle, ShmRingReader, ShmRingWriter
from vllm.executor.executor_base import run_worker_method
from vllm.executor.ray_utils import CALL, STEP

EXIT = b"X"  # engine -> ranks: close the rings and return
# rank -> engine: a step's SamplerOutput (output rank), a control call's pickled result,
# a control call's failure, a step's failure (any rank).
OUTPUT, RESULT, CALL_FAILED, STEP_FAILED = b"O", b"R", b"E", b"F"

# How long a ring's writer waits for its readers to attach: they are starting
# while it waits, so this bounds only a start that went wrong.
ATTACH_TIMEOUT_S = 120.0


class RankHost:
    """Attaches rank ``rank`` to the step ring and opens its reply ring."""

    def __init__(
        self, worker: Any, step: RingHandle, rank: int, chunk_bytes: int, spin_us: float
    ):
        self.worker = worker
        self.rank = rank
        self.inbox = ShmRingReader(step, rank)
        self.outbox = ShmRingWriter(1, chunk_bytes, spin_us)

    def serve(self) -> None:
        """Runs frames until the engine sends EXIT (or closes the ring)."""
        try:
            self.outbox.wait_readers(ATTACH_TIMEOUT_S)
            while True:
                frame = self.inbox.read()
                if frame[:1] == EXIT:
                    self._shutdown_worker()
                    return
                reply = self._run(frame)
                if reply is not None:
                    self.outbox.write(reply)
        except (EOFError, OSError, TimeoutError):
            return  # the engine is gone or never attached: nothing to answer
        finally:
            self.inbox.close()
            self.outbox.close()

    def _run(self, frame: bytes) -> bytes | None:
        body = memoryview(frame)[1:]
        if frame[:1] == STEP:
            try:
                out = self.worker.execute_model(messages.decode_request(body))
            except Exception:
                return STEP_FAILED + _failure(self.rank)
            # Every rank holds the same tokens; only the output rank answers
            # (the worker returns None on the others).
            return None if out is None else OUTPUT + messages.encode(out)
        assert frame[:1] == CALL, frame[:1]
        try:
            method, args, kwargs = pickle.loads(body)
            return RESULT + pickle.dumps(
                run_worker_method(self.worker, method, args, kwargs)
            )
        except Exception:
            return CALL_FAILED + _failure(self.rank)

    def _shutdown_worker(self) -> None:
        # A peer may be gone already; the process ends anyway.
        with contextlib.suppress(Exception):
            self.worker.shutdown()


def _failure(rank: int) -> bytes:
    return f"worker rank {rank} failed: {traceback.format_exc()}".encode()


def start_rank_thread(
    worker: Any, step: RingHandle, chunk_bytes: int, spin_us: float
) -> RingHandle:
    """Through a Ray actor's ``execute_method``: serves the rings from a thread,
    so the actor still answers plain calls (pings, pids); returns the handle of
    this rank's reply ring."""
    host = RankHost(worker, step, worker.rank, chunk_bytes, spin_us)
    threading.Thread(target=host.serve, daemon=True, name="vllm-spmd-rank").start()
    return host.outbox.handle()


def serve_process(
    conn: Any,
    config: Any,
    rank: int,
    init_method: str,
    step: RingHandle,
    chunk_bytes: int,
    spin_us: float,
) -> None:
    """A spawned rank (``WorkerProcess`` target): sends its reply ring's handle
    over the pipe, then serves until EXIT."""
    from vllm.worker.worker import Worker

    worker = Worker(config, rank, init_method)
    host = RankHost(worker, step, rank, chunk_bytes, spin_us)
    conn.send(host.outbox.handle())
    host.serve()
