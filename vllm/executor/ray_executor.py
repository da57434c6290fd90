"""Legacy driver-worker executor whose ranks 1..N-1 are Ray actors."""

from typing import Any

from vllm import envs
from vllm.config import VllmConfig
from vllm.executor.driver_executor import DriverWorkerExecutor, RemoteRanks
from vllm.executor.ray_utils import dead_actors, place_actors, release, wait_all


class ActorRanks(RemoteRanks):
    def __init__(self, config: VllmConfig, init_method: str, started_ray: bool):
        self.started_ray = started_ray
        world = config.parallel_config.world_size
        self.actors, self.group = place_actors(
            config, list(range(1, world)), init_method
        )

    def submit(self, method: str, args: tuple, kwargs: dict) -> list[Any]:
        return [a.execute_method.remote(method, *args, **kwargs) for a in self.actors]

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        import ray

        if timeout is not None:
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=timeout)
            if len(ready) < len(handles):
                raise TimeoutError(f"worker rank(s) did not answer in {timeout} s")
        return wait_all(handles, self.dead_ranks, envs.VLLM_WORKER_LIVENESS_POLL_S)

    def dead_ranks(self) -> list[int]:
        if not _ray_connected():
            return list(range(1, len(self.actors) + 1))
        return [i + 1 for i in dead_actors(self.actors)]

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
