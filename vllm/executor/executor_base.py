"""The executor is a pipe from the engine to the workers.

Backends differ only in transport: ``collective_rpc`` runs a worker method on every
rank, and ``execute_model`` carries one step. Everything else is built on those two,
so every worker method works on every backend. Which backend runs is decided in
``vllm.executor.get_executor_class``; this base class knows none of them.
"""

import signal
from collections.abc import Callable
from typing import Any

from vllm.config import VllmConfig
from vllm.messages import ExecuteModelRequest, SamplerOutput

# A worker method by name, or a function called with the worker as first argument
# (it must be importable by name in the worker's process: a module-level function).
WorkerMethod = str | Callable[..., Any]

# A step in flight: calling it waits for and returns rank 0's SamplerOutput.
StepResult = Callable[[], SamplerOutput | None]


def run_worker_method(
    worker: Any, method: WorkerMethod, args: tuple, kwargs: dict
) -> Any:
    """How every backend's worker host runs a collective_rpc call."""
    if isinstance(method, str):
        return getattr(worker, method)(*args, **kwargs)
    return method(worker, *args, **kwargs)


class WorkerDiedError(RuntimeError):
    """Worker rank(s) are gone; the engine cannot go on. Raised by every backend,
    naming each dead rank with its pid and, when known, why it ended."""

    def __init__(self, deaths: dict[int, tuple[int | None, str | None]]):
        self.ranks = sorted(deaths)  # rank -> (pid, cause) in the message
        details = []
        for rank in self.ranks:
            pid, cause = deaths[rank]
            pid_text = f"pid {pid}" if pid is not None else "pid unknown"
            details.append(f"rank {rank}: {pid_text}, {cause or 'cause unknown'}")
        super().__init__(f"worker rank(s) {self.ranks} died ({'; '.join(details)})")


def describe_exit(code: int | None) -> str | None:
    """A process exit status as words: 'exit code 3', 'killed by SIGKILL'."""
    if code is None:
        return None
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Executor:
    def __init__(self, vllm_config: VllmConfig):
        self.config = vllm_config
        # Control-plane bytes of step messages: engine -> workers, and back.
        self.bytes_sent = 0
        self.bytes_received = 0
        self._init_workers()

    def _init_workers(self) -> None:
        raise NotImplementedError

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        """Runs ``Worker.<method>`` (or ``method(worker, ...)``) on every rank;
        returns the results by rank."""
        raise NotImplementedError

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        return self.collective_rpc("execute_model", (req,))[0]

    def submit_model(self, req: ExecuteModelRequest) -> "StepResult":
        """Sends one step and returns what waits for its output, so the engine
        can schedule the next step while the workers compute (async
        scheduling). Transports that can carry a step in the background
        override this; by default the step runs to completion here."""
        out = self.execute_model(req)
        return lambda: out

    def determine_num_available_blocks(self) -> int:
        # Ranks may differ (replicated KV heads); the smallest one bounds all.
        return min(self.collective_rpc("determine_num_available_blocks"))

    def initialize_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_cache", (num_blocks,))

    def check_health(self) -> None:
        self.collective_rpc("check_health")

    def shutdown(self) -> None:
        pass
