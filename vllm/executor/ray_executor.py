"""Legacy driver-worker executor whose ranks 1..N-1 are Ray actors."""

import time
from typing import Any

from vllm import envs
from vllm.config import VllmConfig
from vllm.executor.driver_executor import DriverWorkerExecutor, RemoteRanks
from vllm.executor.executor_base import WorkerMethod
from vllm.executor.ray_utils import (
    ActorHealth,
    actor_error,
    place_actors,
    release,
    wait_all,
)

Deaths = dict[int, tuple[int | None, str | None]]
# How long a failure on the driver waits for Ray to tell which remote peer was
# lost; an unreachable actor's call failed in ~2.5 s here.
FAILURE_GRACE_S = 5.0


class ActorRanks(RemoteRanks):
    def __init__(self, config: VllmConfig, init_method: str, started_ray: bool):
        self.started_ray = started_ray
        self.poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        world = config.parallel_config.world_size
        self.actors, self.group = place_actors(
            config, list(range(1, world)), init_method
        )
        self.health = ActorHealth(self.actors, first_rank=1)
        self.inflight: list[Any] = []  # the calls last submitted

    def submit(self, method: WorkerMethod, args: tuple, kwargs: dict) -> list[Any]:
        self.inflight = [
            a.execute_method.remote(method, *args, **kwargs) for a in self.actors
        ]
        return self.inflight

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        import ray

        if timeout is not None:
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=timeout)
            if len(ready) < len(handles):
                raise TimeoutError(f"worker rank(s) did not answer in {timeout} s")
        return wait_all(handles, self.health, self.poll_s)

    def deaths(self) -> Deaths:
        if not _ray_connected():
            cause = "Ray was shut down"
            return {r + 1: (pid, cause) for r, pid in enumerate(self.health.pids)}
        return self.health.deaths()

    def deaths_after(self, error: BaseException) -> Deaths:
        """A peer's lost node breaks the driver's collective at once, but Ray
        tells of the loss only when the peer's call in flight fails (seconds)
        or the node is declared dead (~15 s): wait up to FAILURE_GRACE_S."""
        if all(self.health.local):  # checked by pid
            return super().deaths_after(error)
        deadline = time.monotonic() + FAILURE_GRACE_S
        while True:
            failed = actor_error(self.inflight)
            if failed is not None:
                return self.health.deaths_from(failed)
            deaths = self.deaths()
            if deaths or time.monotonic() >= deadline:
                return deaths
            time.sleep(0.1)

    def close(self) -> None:
        # With Ray already shut down (an exit hook that ran before ours), any Ray
        # call would quietly start a new local Ray; its shutdown took the actors.
        if _ray_connected():
            release(self.actors, self.group, self.started_ray)


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


class RayDriverExecutor(DriverWorkerExecutor):
    def _master_address(self) -> str:
        import ray

        from vllm.executor.ray_utils import initialize_ray

        pc = self.config.parallel_config
        self._started_ray = initialize_ray(pc.ray_address, pc.world_size)
        return ray.util.get_node_ip_address()

    def _make_remote(self, init_method: str) -> RemoteRanks:
        return ActorRanks(self.config, init_method, self._started_ray)
