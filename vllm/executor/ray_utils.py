"""Ray plumbing shared by the Ray backends: joining or starting Ray, placing one
actor per rank, and the actor that hosts a Worker."""

import contextlib
import os
from typing import Any

from vllm.config import VllmConfig
from vllm.logger import init_logger

logger = init_logger(__name__)


class RayWorkerWrapper:
    """Hosts one Worker inside a Ray actor; every worker method is reachable
    through execute_method."""

    def __init__(self, config: VllmConfig, rank: int, init_method: str | None):
        from vllm.worker.worker import Worker

        self.worker = Worker(config, rank, init_method)

    def execute_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.worker, method)(*args, **kwargs)

    def get_node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()


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
    actors = [
        actor_cls.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=i
            ),
            name=None,
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

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    if group is not None:
        with contextlib.suppress(Exception):
            remove_placement_group(group)
    if started_ray and ray.is_initialized():
        ray.shutdown()
