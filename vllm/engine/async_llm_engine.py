"""``AsyncLLMEngine``: the engine behind an asyncio server.

One thread owns the ``LLMEngine``. Between steps it applies the requests added and
aborted from the event loop; it steps while work is left and sleeps on an event
when none is, so an idle engine costs no CPU. After each step it hands all of the
step's outputs to the event loop in one ``call_soon_threadsafe`` call. A request's
stream keeps only its latest ``RequestOutput`` (outputs are cumulative), so a slow
reader skips ahead instead of letting a queue grow.

A dedicated thread rather than ``asyncio.to_thread(engine.step)`` per step: the
engine keeps stepping while the event loop is busy writing responses, and the
per-step hand-off is one callback instead of a thread-pool round trip (see the
measurement in benchmarks/README.md).
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import copy
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from vllm.config import VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.llm_engine import LLMEngine, PromptType
from vllm.logger import init_logger
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

logger = init_logger(__name__)


class EngineDeadError(RuntimeError):
    """The engine stopped (it failed, or it is shutting down): no request can
    be served any more."""


class StatLogger(Protocol):
    """Hooks the engine thread calls (e.g. ``vllm.engine.metrics``)."""

    def added(self, request_id: str, params: SamplingParams, arrival: float) -> None:
        """``arrival`` is time.monotonic() when the caller submitted it."""

    def stepped(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None: ...

    def aborted(self, engine: LLMEngine, request_ids: list[str]) -> None: ...


@dataclass(eq=False)
class _StreamState:
    """What the event loop knows of one request; touched only on the loop."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    latest: RequestOutput | None = None
    error: BaseException | None = None
    aborted: bool = False


@dataclass
class _Add:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    arrival: float
    done: concurrent.futures.Future
    lora_request: LoRARequest | None = None


class RequestStream:
    """A request's outputs as an async iterator: each item is the request's full
    ``RequestOutput`` so far; the last one has ``finished=True``. The iterator
    ends early if the request is aborted, and raises ``EngineDeadError`` if the
    engine stops. ``close()``, or dropping the stream, aborts an unfinished
    request."""

    def __init__(self, engine: "AsyncLLMEngine", request_id: str, state: _StreamState):
        self.request_id = request_id
        self._engine = engine
        self._state = state
        self._done = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        state = self._state
        if self._done:
            raise StopAsyncIteration
        await state.event.wait()
        state.event.clear()
        if state.error is not None:
            self._done = True
            raise state.error
        out, state.latest = state.latest, None
        if state.aborted and (out is None or not out.finished):
            self._done = True
            raise StopAsyncIteration
        self._done = out.finished
        return out

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._engine._discard(self.request_id, self._state)

    def __del__(self) -> None:
        # A response dropped before it ran its cleanup (its client left early)
        # must still free the request's blocks.
        self.close()


class AsyncLLMEngine:
    def __init__(
        self,
        engine: LLMEngine,
        vllm_config: VllmConfig,
        stat_logger: StatLogger | None = None,
    ):
        self.engine = engine
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.stat_logger = stat_logger
        # The event loop's own tokenizer: fast tokenizers are not safe to use
        # from two threads at once, and the engine thread detokenizes.
        self._tokenizer = copy.deepcopy(engine.get_tokenizer())
        self._inbox: collections.deque[_Add | list[str]] = collections.deque()
        self._wake = threading.Event()
        self._states: dict[str, _StreamState] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: EngineDeadError | None = None
        self._closing = False

    @classmethod
    def from_engine_args(
        cls, engine_args: EngineArgs, stat_logger: StatLogger | None = None
    ) -> "AsyncLLMEngine":
        config = engine_args.create_engine_config()
        return cls(LLMEngine(config), config, stat_logger)

    def get_tokenizer(self):
        """A tokenizer for the event loop's thread (a copy of the engine's)."""
        return self._tokenizer

    @property
    def errored(self) -> bool:
        return self._dead is not None and not self._stopping

    def check_health(self) -> None:
        if self._dead is not None:
            raise self._dead

    async def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        lora_request: LoRARequest | None = None,
    ) -> RequestStream:
        """Submits a request. Errors of ``LLMEngine.add_request`` (ValueError,
        TypeError) are raised here, before any output."""
        self._start()
        if self._closing:
            raise EngineDeadError("the engine is shutting down")
        self.check_health()
        if request_id in self._states:
            raise ValueError(f"request_id {request_id!r} is already in use")
        state = _StreamState()
        self._states[request_id] = state
        done: concurrent.futures.Future = concurrent.futures.Future()
        params = params or SamplingParams()
        self._post(
            _Add(request_id, prompt, params, time.monotonic(), done, lora_request)
        )
        try:
            await asyncio.wrap_future(done)
        except BaseException:
            rejected = (
                done.done() and not done.cancelled() and done.exception() is not None
            )
            # Cancelled, perhaps while the engine thread added it: abort it.
            self._discard(request_id, state, abort=not rejected)
            raise
        return RequestStream(self, request_id, state)

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams | None,
        request_id: str,
        lora_request: LoRARequest | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """vLLM's interface: the request's outputs as they are produced. Closing
        the generator early (a cancelled task, a client gone) aborts the
        request."""
        stream = await self.add_request(
            request_id, prompt, sampling_params, lora_request
        )
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            state = self._states.pop(rid, None)
            if state is not None:
                state.aborted = True
                state.event.set()
        self._post_abort(ids)

    def begin_shutdown(self) -> None:
        """Refuses new requests and ends every open stream with EngineDeadError
        (the engine aborts their requests). Callable from any thread and from a
        signal handler."""
        if self._closing:
            return
        self._closing = True
        if self._loop is not None:
            self._to_loop(
                self._fail_streams, EngineDeadError("the server is shutting down")
            )

    def shutdown(self) -> None:
        """Stops the engine thread and the engine (its workers exit). Streams
        still open end with EngineDeadError once the event loop runs again."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._dead is None:
            self._dead = EngineDeadError("the engine was shut down")
        self._fail_inbox()
        self.engine.shutdown()

    # -- event loop side ------------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("AsyncLLMEngine is bound to another event loop")
            # First use, or the previous loop has ended (asyncio.run per call).
            self._loop = loop
            self._states.clear()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="vllm-engine", daemon=True
            )
            self._thread.start()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            state = self._states.get(out.request_id)
            if state is None:
                continue  # aborted meanwhile
            state.latest = out
            state.event.set()
            if out.finished:
                del self._states[out.request_id]

    def _discard(self, request_id: str, state: _StreamState, abort=True) -> None:
        if self._states.get(request_id) is state:
            del self._states[request_id]
        if abort:
            self._post_abort([request_id])

    def _fail_streams(self, error: BaseException) -> None:
        states, self._states = self._states, {}
        for state in states.values():
            state.error = error
            state.event.set()
        self._post_abort(list(states))

    # -- either thread ---------------------------------------------------------

    def _post(self, command: _Add | list[str]) -> None:
        self._inbox.append(command)
        self._wake.set()
        if self._dead is not None:  # no thread left to take it
            self._fail_inbox()

    def _post_abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._post(list(request_ids))

    def _fail_inbox(self) -> None:
        while True:
            try:
                command = self._inbox.popleft()
            except IndexError:
                return
            if (
                isinstance(command, _Add)
                and command.done.set_running_or_notify_cancel()
            ):
                command.done.set_exception(self._dead)

    # -- engine thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._apply_inbox()
                if self._stopping:
                    return
                if not self.engine.has_unfinished_requests():
                    self._wake.wait()
                    continue
                outputs = self.engine.step()
                if self.stat_logger is not None:
                    self.stat_logger.stepped(self.engine, outputs)
                if outputs:
                    self._to_loop(self._deliver, outputs)
        except BaseException as exc:
            logger.exception("engine loop failed")
            self._dead = EngineDeadError(f"the engine failed: {exc!r}")
            self._dead.__cause__ = exc
        finally:
            if self._dead is None:
                self._dead = EngineDeadError("the engine was shut down")
            self._fail_inbox()
            self._to_loop(self._fail_streams, self._dead)

    def _to_loop(self, callback, arg) -> None:
        # A closed loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, arg)

    def _apply_inbox(self) -> None:
        engine, stats = self.engine, self.stat_logger
        while self._inbox:
            command = self._inbox.popleft()
            if isinstance(command, list):
                engine.abort_request(command)
                if stats is not None:
                    stats.aborted(engine, command)
                continue
            if not command.done.set_running_or_notify_cancel():
                continue  # the caller gave up before it was added
            try:
                engine.add_request(
                    command.request_id,
                    command.prompt,
                    command.params,
                    lora_request=command.lora_request,
                )
            except Exception as exc:
                command.done.set_exception(exc)
                continue
            if stats is not None:
                stats.added(command.request_id, command.params, command.arrival)
            command.done.set_result(None)


# vLLM's newer name for the same thing.
AsyncLLM = AsyncLLMEngine
