"""SPMD control plane: every rank, rank 0 included, is a Ray actor; the engine
process holds no weights, no KV cache and no torch.distributed group.

Each step the engine encodes one ``ExecuteModelRequest`` (a delta, see
``vllm.messages``) and sends the same bytes to every rank, which decodes it, updates
its own request states and runs the step; only the output rank's ``SamplerOutput``
is read (rank 0's; with pipeline stages the last stage's first rank's). Pipeline
stages hand hidden states to each other over torch.distributed inside
``execute_frame``, as on the ring planes, rather than along graph edges: the
worker runs one code path on every SPMD plane.
With ``VLLM_USE_RAY_COMPILED_DAG=1`` the bytes travel through a Ray Compiled Graph
(input node -> every worker's ``execute_frame`` -> multi-output node) over
shared-memory channels; otherwise (or when a rank is on another Ray node than the
engine: ``_graph_allowed``) through plain actor calls. Once the graph is
compiled, control calls travel through it too, so every worker method has one path.
``submit_model`` leaves a step running in the graph while the engine schedules the
next (async scheduling); outputs are read back in the order the steps were sent.

Ray's graph readers poll their channels (in C++, yielding between polls), so every
rank burns a core while the graph waits for a step. After
``ParallelConfig.spmd_graph_idle_teardown_s`` without a step, a timer thread tears
the graph down; control calls then go as plain actor calls, and the next step
compiles the graph again (``graph_stats`` says how long that took).
"""

import atexit
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vllm import envs, messages
from vllm.executor.executor_base import (
    Executor,
    StepResult,
    WorkerDiedError,
    WorkerMethod,
)
from vllm.executor.idle_timer import IdleTimer
from vllm.executor.ray_utils import (
    STEP,
    ActorHealth,
    encode_call,
    initialize_ray,
    place_actors,
    release,
    wait_all,
)
from vllm.logger import init_logger
from vllm.messages import ExecuteModelRequest, SamplerOutput

logger = init_logger(__name__)


@dataclass
class GraphStats:
    """How often the compiled graph was built and torn down for being idle, and
    how long the last of each took (seconds): the price of an idle engine."""

    compiles: int = 0
    compile_s: float = 0.0
    idle_teardowns: int = 0
    teardown_s: float = 0.0


class _SPMDGroup:
    """The actors, placement group and compiled graph; closed once, by shutdown,
    garbage collection or interpreter exit, whichever comes first."""

    def __init__(self, actors: list[Any], group: Any, started_ray: bool, idle_s: float):
        self.actors = actors
        self.group = group
        self.started_ray = started_ray
        self.graph: Any = None
        self.notify: socket.socket | None = None  # the output rank's step pings
        self.notify_path = ""
        self.closed = False
        self.stats = GraphStats()
        self.steps_in_flight = 0  # sent through the graph, output not yet read
        # Held by every use of the actors, so the idle teardown never races one.
        self.lock = threading.RLock()
        self.idle_timer = (
            IdleTimer(idle_s, self.close_idle_graph, self.lock, "vllm-spmd-idle")
            if idle_s > 0
            else None
        )

    def close_idle_graph(self) -> None:
        """Run by the idle timer, with the lock held."""
        if self.graph is None or self.closed or self.steps_in_flight:
            return
        start = time.perf_counter()
        self.close_graph()
        self.stats.idle_teardowns += 1
        self.stats.teardown_s = time.perf_counter() - start
        logger.debug(
            "compiled graph idle for %.1f s: torn down in %.0f ms",
            self.idle_timer.idle_s,
            1e3 * self.stats.teardown_s,
        )

    def close_graph(self) -> None:
        """Tears the graph down. Once it is, the step results still referenced
        (say, by a traceback) are dropped silently; before, each would try to
        release a buffer of a closed channel and print an error."""
        if self.graph is not None:
            graph, self.graph = self.graph, None
            try:
                graph.teardown()
            except Exception as e:  # a dead rank can make teardown complain
                logger.debug("compiled graph teardown: %s", e)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        if self.idle_timer is not None:
            self.idle_timer.stop()
        self.close_graph()
        release(self.actors, self.group, self.started_ray)
        if self.notify is not None:
            self.notify.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.notify_path)


class RaySPMDExecutor(Executor):
    def _init_workers(self) -> None:
        import ray

        pc = self.config.parallel_config
        started = initialize_ray(pc.ray_address, pc.world_size)
        actors, group = place_actors(self.config, list(range(pc.world_size)), None)
        self._group = _SPMDGroup(actors, group, started, pc.spmd_graph_idle_teardown_s)
        # Closing before Ray's own exit hook runs keeps interpreter exit quiet.
        atexit.register(self._group.close)
        self._finalizer = weakref.finalize(self, self._group.close)
        self._health = ActorHealth(actors, first_rank=0)
        self._use_graph = pc.use_compiled_dag and _graph_allowed(self._health)
        self._poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        ip, port = ray.get(actors[0].node_ip_and_port.remote())
        init = f"tcp://{ip}:{port}"
        ray.get([a.set_init_method.remote(init) for a in actors])
        if pc.spmd_worker_niceness:
            ray.get([a.renice.remote(pc.spmd_worker_niceness) for a in actors])
        self.collective_rpc("init_device")
        self.collective_rpc("load_model")

    @property
    def actors(self) -> list[Any]:
        return self._group.actors

    @property
    def graph_stats(self) -> GraphStats:
        return self._group.stats

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        import pickle

        with self._group.lock:
            if self._group.graph is not None:
                frames = self._run_graph(encode_call(method, args, kwargs or {}))
                return [pickle.loads(f) for f in frames]
            # No graph (not compiled yet, or torn down while idle): the actors
            # are free to take plain calls.
            refs = [
                a.execute_method.remote(method, *args, **(kwargs or {}))
                for a in self.actors
            ]
            return self._wait(refs)

    def submit_model(self, req: ExecuteModelRequest) -> StepResult:
        """Sends the step and returns at once: the graph runs it while the engine
        schedules the next one (Ray keeps up to 10 executions in flight and
        buffers results fetched out of order, say a control call's)."""
        frame = STEP + messages.encode(req)
        self.bytes_sent += len(frame)
        with self._group.lock:
            if not self._use_graph:
                refs = [a.execute_frame.remote(frame) for a in self.actors]
                return lambda: self._step_output(self._wait(refs))
            if self._group.graph is None:
                self._build_graph()
            with self._dead_rank_check():
                refs = self._group.graph.execute(frame)
            self._group.steps_in_flight += 1
        return lambda: self._step_output(self._collect(refs, step=True))

    def execute_model(self, req: ExecuteModelRequest) -> SamplerOutput:
        return self.submit_model(req)()

    def _step_output(self, results: list[bytes]) -> SamplerOutput:
        self.bytes_received += sum(len(r) for r in results)
        return messages.decode_output(results[self.config.parallel_config.output_rank])

    def _build_graph(self) -> None:
        """Compiles the graph: before the first step, and after an idle teardown."""
        pc = self.config.parallel_config
        g = self._group
        local = self._health.local[pc.output_rank]
        if pc.spmd_step_notifier and local and g.notify is None:
            self._open_notifier()  # once: it outlives a torn-down graph
        # A rank that died while the graph was down must be named, not left to
        # fail the compile obscurely.
        self._health.raise_if_dead()
        start = time.perf_counter()
        try:
            g.graph = self._compile()
        except Exception as e:
            self._health.raise_if_dead(e)
            raise
        g.stats.compiles += 1
        g.stats.compile_s = time.perf_counter() - start
        if g.stats.idle_teardowns:
            logger.debug("compiled graph rebuilt in %.0f ms", 1e3 * g.stats.compile_s)

    def _open_notifier(self) -> None:
        import ray

        path = os.path.join(
            tempfile.gettempdir(), f"vllm-step-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(self._poll_s)
        self._group.notify, self._group.notify_path = sock, path
        output_actor = self.actors[self.config.parallel_config.output_rank]
        ray.get(output_actor.set_step_notifier.remote(path))

    def _compile(self) -> Any:
        from ray.dag import InputNode, MultiOutputNode
        from ray.dag.context import DAGContext

        ctx = DAGContext.get_current()
        ctx.submit_timeout = envs.VLLM_RAY_CGRAPH_SUBMIT_TIMEOUT
        ctx.get_timeout = envs.VLLM_RAY_CGRAPH_GET_TIMEOUT
        _quiet_teardown_of_dead_actors()
        with InputNode() as frame:
            dag = MultiOutputNode([a.execute_frame.bind(frame) for a in self.actors])
        return dag.experimental_compile()

    def _run_graph(self, frame: bytes) -> list[bytes]:
        with self._dead_rank_check():
            refs = self._group.graph.execute(frame)
        return self._collect(refs, step=False)

    def _collect(self, refs: Any, step: bool) -> list[bytes]:
        """Waits for one execution's results. Steps are collected in the order
        they were sent, so each consumes the oldest of rank 0's pings."""
        import ray

        with self._group.lock, self._dead_rank_check():
            if self._group.graph is None:  # torn down after a rank died
                self._health.raise_if_dead()
            try:
                if step and self._group.notify is not None:
                    self._sleep_until_done()
                return ray.get(refs)
            finally:
                self._group.steps_in_flight -= step
                if self._group.idle_timer is not None:
                    self._group.idle_timer.arm()

    @contextlib.contextmanager
    def _dead_rank_check(self) -> Iterator[None]:
        """An error while a rank is dead is reported as that death; the graph
        cannot run without the rank, so it is torn down now, before anything it
        left behind complains."""
        try:
            yield
        except Exception as e:
            try:
                self._health.raise_if_dead(e)
            except WorkerDiedError:
                self._group.close_graph()
                raise
            raise

    def _sleep_until_done(self) -> None:
        """Blocks in the kernel until the output rank pings; checks liveness
        meanwhile."""
        sock = self._group.notify
        while True:
            try:
                sock.recv(16)
                return
            except TimeoutError:
                self._health.raise_if_dead()

    def _wait(self, refs: list[Any]) -> list[Any]:
        return wait_all(refs, self._health, self._poll_s)

    def shutdown(self) -> None:
        self._finalizer()


def _graph_allowed(health: ActorHealth) -> bool:
    """Whether steps may go through the compiled graph: only while every rank is
    on the engine's Ray node. Across nodes, Ray 2.60's graph channels were seen
    to lose a step now and then (every reader waiting on its input while the
    engine waits on the output, until the get timeout), also in a graph of bare
    actors with no vLLM code; plain actor calls carry the steps there instead."""
    if all(health.local):
        return True
    logger.warning(
        "rank(s) %s are on other Ray nodes than the engine: steps go as plain "
        "actor calls, not through the compiled graph (VLLM_USE_RAY_COMPILED_DAG)",
        [r for r, local in enumerate(health.local, health.first_rank) if not local],
    )
    return False


class _DeadActorCancelFilter(logging.Filter):
    """Ray's compiled graph tears itself down when an actor dies and logs the
    failed cancel of the dead actor's loop as an ERROR with a traceback. The
    executor reports that death itself (WorkerDiedError), so the record only
    repeats it; other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        import ray

        error = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage() == "Error cancelling worker task"
            and isinstance(error, ray.exceptions.RayActorError)
        )


def _quiet_teardown_of_dead_actors() -> None:
    graph_logger = logging.getLogger("ray.dag.compiled_dag_node")
    if not any(isinstance(f, _DeadActorCancelFilter) for f in graph_logger.filters):
        graph_logger.addFilter(_DeadActorCancelFilter())
