"""Ray plumbing shared by the Ray backends: joining or starting Ray, placing one
actor per rank, and the actor that hosts a Worker."""

import contextlib
import os
import pickle
import socket
from typing import Any

from vllm import messages
from vllm.config import VllmConfig
from vllm.logger import init_logger

logger = init_logger(__name__)


# Frames carried by the SPMD graph: one tag byte, then the payload. A step is the
# msgspec encoding of ExecuteModelRequest; a control call is pickled, since it is
# rare and may carry any Python value.
STEP, CALL = b"S", b"C"


def encode_call(method: str, args: tuple, kwargs: dict) -> bytes:
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
        """Rank 0 pings the engine at path when a step's output is ready, so the
        engine can sleep in the kernel instead of spinning on the channel."""
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.connect(path)

    def execute_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.worker, method)(*args, **kwargs)

    def execute_frame(self, frame: bytes) -> bytes:
        """A step returns rank 0's encoded SamplerOutput and an empty frame on
        other ranks; a control call returns every rank's pickled result."""
        if frame[:1] == STEP:
            out = self.worker.execute_model(messages.decode_request(frame[1:]))
            if out is None:
                return b""
            data = messages.encode(out)
            if self._notify is not None:
                self._notify.send(b"!")
            return data
        method, args, kwargs = pickle.loads(frame[1:])
        return pickle.dumps(getattr(self.worker, method)(*args, **kwargs))

    def node_ip_and_port(self) -> tuple[str, int]:
        import ray

        from vllm.distributed.parallel_state import get_open_port

        return ray.util.get_node_ip_address(), get_open_port()

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


def place_actors(
    config: VllmConfig, ranks: list[int], init_method: str | None
) -> tuple[list[Any], Any]:
    """One actor per rank, packed through a placement group with a CPU each."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"CPU": 1}] * len(ranks), strategy="PACK")
    ray.get(group.ready(), timeout=120)
    actor_cls = ray.remote(num_cpus=1)(RayWorkerWrapper)
    vllm_env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    actors = [
        actor_cls.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=i
            ),
            # Actors inherit the environment Ray started with; carry the
            # engine's VLLM_* settings (thread counts, flags) to them.
            runtime_env={"env_vars": vllm_env},
        ).remote(config, rank, init_method)
        for i, rank in enumerate(ranks)
    ]
    return actors, group


def dead_actors(actors: list[Any]) -> list[int]:
    """Indices of actors whose process is gone. A busy actor does not answer the
    ping within the timeout and counts as alive; a dead one fails at once."""
    import ray

    pings = [a.__ray_ready__.remote() for a in actors]
    ready, _ = ray.wait(pings, num_returns=len(pings), timeout=0.2)
    dead = []
    for i, ping in enumerate(pings):
        if ping in ready:
            try:
                ray.get(ping)
            except ray.exceptions.RayActorError:
                dead.append(i)
    return dead


def wait_all(refs: list[Any], dead_ranks, poll_s: float) -> list[Any]:
    """ray.get that notices a dead rank instead of waiting forever."""
    import ray

    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=poll_s)
        if len(ready) == len(refs):
            break
        dead = dead_ranks()
        if dead:
            raise RuntimeError(f"worker rank(s) {dead} died")
    try:
        return ray.get(refs)
    except ray.exceptions.RayActorError as e:
        raise RuntimeError(f"worker rank(s) {dead_ranks()} died") from e


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
