"""Legacy driver-worker executor whose ranks 1..N-1 are Ray actors."""

from typing import Any

from vllm import envs
from vllm.config import VllmConfig
from vllm.executor.driver_executor import DriverWorkerExecutor, RemoteRanks
from vllm.executor.executor_base import WorkerMethod
from vllm.executor.ray_utils import ActorHealth, place_actors, release, wait_all


class ActorRanks(RemoteRanks):
    def __init__(self, config: VllmConfig, init_method: str, started_ray: bool):
        self.started_ray = started_ray
        self.poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        world = config.parallel_config.world_size
        self.actors, self.group = place_actors(
            config, list(range(1, world)), init_method
        )
        self.health = ActorHealth(self.actors, first_rank=1)

    def submit(self, method: WorkerMethod, args: tuple, kwargs: dict) -> list[Any]:
        return [a.execute_method.remote(method, *args, **kwargs) for a in self.actors]

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        import ray

        if timeout is not None:
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=timeout)
            if len(ready) < len(handles):
                raise TimeoutError(f"worker rank(s) did not answer in {timeout} s")
        return wait_all(handles, self.health, self.poll_s)

    def deaths(self) -> dict[int, tuple[int | None, str | None]]:
        if not _ray_connected():
            cause = "Ray was shut down"
            return {r + 1: (pid, cause) for r, pid in enumerate(self.health.pids)}
        return self.health.deaths()

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
