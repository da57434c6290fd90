"""Ray plumbing shared by the Ray backends: joining or starting Ray, placing one
actor per rank, and the actor that hosts a Worker."""

import contextlib
import os
import pickle
import socket
import time
from typing import Any

import psutil

from vllm import messages
from vllm.config import VllmConfig
from vllm.executor.executor_base import WorkerDiedError, run_worker_method
from vllm.logger import init_logger

logger = init_logger(__name__)


# Frames carried by the SPMD graph: one tag byte, then the payload. A step is the
# msgspec encoding of ExecuteModelRequest; a control call is pickled, since it is
# rare and may carry any Python value.
STEP, CALL = b"S", b"C"


def encode_call(method: Any, args: tuple, kwargs: dict) -> bytes:
    return CALL + pickle.dumps((method, args, kwargs))


class RayWorkerWrapper:
    """Hosts one Worker inside a Ray actor; every worker method is reachable
    through execute_method (plain calls) or execute_frame (the SPMD graph)."""

    def __init__(self, config: VllmConfig, rank: int, init_method: str | None):
        from vllm.worker.worker import Worker

        self.rank = rank
        self.worker = Worker(config, rank, init_method)
        self._notify: socket.socket | None = None

    def renice(self, increment: int) -> None:
        os.nice(increment)

    def set_step_notifier(self, path: str) -> None:
        """The output rank pings the engine at path when a step's output is
        ready, so the engine can sleep in the kernel instead of spinning on the
        channel."""
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.connect(path)

    def execute_method(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return run_worker_method(self.worker, method, args, kwargs)

    def execute_frame(self, frame: bytes) -> bytes:
        """A step returns the output rank's encoded SamplerOutput and an empty
        frame on other ranks; a control call returns every rank's pickled
        result."""
        if frame[:1] == STEP:
            out = self.worker.execute_model(messages.decode_request(frame[1:]))
            if out is None:
                return b""
            data = messages.encode(out)
            if self._notify is not None:
                self._notify.send(b"!")
            return data
        method, args, kwargs = pickle.loads(frame[1:])
        return pickle.dumps(run_worker_method(self.worker, method, args, kwargs))

    def node_ip_and_port(self) -> tuple[str, int]:
        import ray

        from vllm.distributed.parallel_state import get_open_port

        return ray.util.get_node_ip_address(), get_open_port()

    def node_id_and_pid(self) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def set_init_method(self, init_method: str) -> None:
        self.worker.distributed_init_method = init_method


def initialize_ray(address: str, num_cpus_needed: int) -> bool:
    """Joins Ray if it is up (or an address is given); else starts a local one
    with the dashboard off and enough CPUs. Returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **quiet)
        return False
    try:
        ray.init(address="auto", **quiet)
        return False
    except ConnectionError:
        pass
    ray.init(num_cpus=max(os.cpu_count() or 1, num_cpus_needed), **quiet)
    return True


# Strategies that put bundles on different nodes: under them the legacy driver
# (rank 0, in the engine process) takes a bundle too, so the actors spread away
# from the engine's node as they would from an actor there.
SPREADING = ("SPREAD", "STRICT_SPREAD")
PLACEMENT_TIMEOUT_S = 120.0


def place_actors(
    config: VllmConfig, ranks: list[int], init_method: str | None
) -> tuple[list[Any], Any]:
    """One actor per rank, each on a one-CPU bundle of a placement group with
    the configured strategy (``ParallelConfig.ray_placement_strategy``)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = config.parallel_config.ray_placement_strategy
    driver = ranks[0] != 0 and strategy in SPREADING
    group = _ready_group(len(ranks) + driver, strategy)
    bundles = _off_engine_node(group, len(ranks)) if driver else range(len(ranks))
    actor_cls = ray.remote(num_cpus=1)(RayWorkerWrapper)
    vllm_env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    actors = [
        actor_cls.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=bundle
            ),
            # Actors inherit the environment Ray started with; carry the
            # engine's VLLM_* settings (thread counts, flags) to them.
            runtime_env={"env_vars": vllm_env},
        ).remote(config, rank, init_method)
        for bundle, rank in zip(bundles, ranks)
    ]
    return actors, group


def _ready_group(n: int, strategy: str) -> Any:
    """A placement group of n one-CPU bundles, once Ray has reserved them."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 1}] * n, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"Ray could not place {n} bundle(s) of 1 CPU with strategy {strategy} "
            f"in {PLACEMENT_TIMEOUT_S:.0f} s (STRICT_SPREAD needs {n} nodes with a "
            f"free CPU each; STRICT_PACK one node with {n}); the cluster has "
            f"{ray.available_resources().get('CPU', 0):g} free CPU(s) on "
            f"{sum(node['Alive'] for node in ray.nodes())} node(s)"
        ) from None
    return group


def _off_engine_node(group: Any, n: int) -> list[int]:
    """n of the group's bundles, those on other nodes than the engine's first;
    the one left stands for the legacy driver."""
    import ray
    from ray.util.placement_group import placement_group_table

    here = ray.get_runtime_context().get_node_id()
    nodes = placement_group_table(group)["bundles_to_node_id"]
    return sorted(nodes, key=lambda bundle: nodes[bundle] == here)[:n]


class ActorHealth:
    """Tells which of an engine's actors died, and as what process.

    An actor on the engine's Ray node is checked by its pid, at once and exactly
    (a busy actor, such as one inside a compiled graph, answers no ping). One on
    another node is pinged: a dead one fails, a busy one does not answer in time
    and counts as alive. ``local`` also decides whether a rank may map the
    engine's shared memory (the SPMD rings, the step notifier's socket)."""

    def __init__(self, actors: list[Any], first_rank: int):
        import ray

        self.actors = actors
        self.first_rank = first_rank  # rank of actors[0]
        # Local means the same Ray node, not the same IP: nodes can share an
        # address (several raylets on one host, as ray.cluster_utils makes;
        # containers on the host's network, each with its own /dev/shm and pid
        # namespace). A node id names one raylet, and the engine attached to its
        # own node's; so another node's rank takes the cross-node path even
        # where it happens to share this machine.
        here = ray.get_runtime_context().get_node_id()
        found = ray.get([a.node_id_and_pid.remote() for a in actors])
        self.node_ids = [node for node, _ in found]
        self.pids = [pid for _, pid in found]
        self.local = [node == here for node in self.node_ids]
        self.actor_ids = [a._actor_id.hex() for a in actors]  # as Ray's errors say

    def deaths(self, cause: str | None = None) -> dict[int, tuple[int, str | None]]:
        """Dead ranks -> (pid, cause); ``cause`` is what the caller learnt (e.g.
        from Ray's error), if anything."""
        import ray

        dead = [
            i
            for i, local in enumerate(self.local)
            if local and not _alive(self.pids[i])
        ]
        remote = [i for i, local in enumerate(self.local) if not local]
        pings = {i: self.actors[i].__ray_ready__.remote() for i in remote}
        if pings:
            ready, _ = ray.wait(
                list(pings.values()), num_returns=len(pings), timeout=0.2
            )
            for i, ping in pings.items():
                if ping in ready:
                    try:
                        ray.get(ping)
                    except ray.exceptions.RayActorError:
                        dead.append(i)
        # Ray does not pass on an actor's exit status; say what is known.
        cause = cause or "its process is gone"
        return {self.first_rank + i: (self.pids[i], cause) for i in sorted(dead)}

    def raise_if_dead(self, error: BaseException | None = None) -> None:
        """Raises WorkerDiedError if a rank is gone (see ``deaths_from``)."""
        deaths = self.deaths() if error is None else self.deaths_from(error)
        if deaths:
            raise WorkerDiedError(deaths) from error

    def deaths_from(self, error: BaseException) -> dict[int, tuple[int | None, str]]:
        """Dead ranks, given the error a call failed with. Ray's error for an
        unreachable actor names its rank at once: Ray declares a lost node dead
        only when its health checks have failed (~15 s by default), and the
        step is lost either way. Another actor error waits a little for the
        death to show, since Ray may report it first."""
        import ray

        if not isinstance(error, ray.exceptions.RayActorError):
            return self.deaths()
        cause = _exit_detail(error)
        named = {
            self.first_rank + i: (self.pids[i], cause)
            for i, actor_id in enumerate(self.actor_ids)
            if actor_id == error.actor_id
        }
        if named and isinstance(error, ray.exceptions.ActorUnavailableError):
            return named
        for _ in range(20):
            deaths = self.deaths(cause)
            if deaths:
                return deaths
            time.sleep(0.1)
        # Ray says an actor died, though none looks dead yet.
        ranks = range(self.first_rank, self.first_rank + len(self.actors))
        return named or {r: (None, cause) for r in ranks}


def actor_error(refs: list[Any]) -> BaseException | None:
    """The error of the first finished call in refs that failed because Ray
    lost its actor, if any: ``ray.get`` of a list raises whichever failure it
    meets first, perhaps a peer's broken collective instead."""
    import ray

    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayActorError as e:
            return e
        except Exception:
            pass  # not finished, or failed otherwise
    return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _exit_detail(error: BaseException) -> str:
    """The "Worker exit detail" Ray puts in an actor's death message, if any."""
    import ray

    if isinstance(error, ray.exceptions.ActorUnavailableError):
        return "Ray: the actor is unreachable (its node may be gone)"
    text = str(error)
    marker = "Worker exit detail: "
    if marker in text:
        return "Ray: " + text.split(marker, 1)[1].split(". ", 1)[0]
    return "Ray reports the actor dead"


def wait_all(refs: list[Any], health: ActorHealth, poll_s: float) -> list[Any]:
    """ray.get that notices a dead rank instead of waiting forever."""
    import ray

    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=poll_s)
        if len(ready) == len(refs):
            break
        health.raise_if_dead()
    try:
        return ray.get(refs)
    except Exception as e:
        # A rank's death also fails its peers' collectives: name the death.
        health.raise_if_dead(actor_error(refs) or e)
        raise


def release(actors: list[Any], group: Any, started_ray: bool) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    if not ray.is_initialized():  # Ray already gone: so are the actors
        return
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    if group is not None:
        with contextlib.suppress(Exception):
            remove_placement_group(group)
    if started_ray and ray.is_initialized():
        ray.shutdown()
