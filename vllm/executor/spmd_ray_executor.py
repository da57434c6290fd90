"""SPMD ranks placed by Ray, driven through our shared-memory rings.

Ray places one actor per rank (``ray_utils.place_actors``); when every actor runs on
the engine's node, each serves the rings from a thread (``spmd_host``) and steps
never go through Ray. A rank on another node cannot map this machine's shared
memory: then every call stays a plain actor call (the fallback). The compiled-graph
plane is ``ray_spmd_executor``.
"""

import atexit
import weakref
from typing import Any

from vllm import envs, messages
from vllm.distributed.shm_broadcast import RingHandle
from vllm.executor.executor_base import StepResult, WorkerMethod
from vllm.executor.ray_utils import (
    STEP,
    ActorHealth,
    initialize_ray,
    place_actors,
    release,
    wait_all,
)
from vllm.executor.spmd_executor import Deaths, SPMDRingExecutor
from vllm.executor.spmd_host import start_rank_thread
from vllm.messages import ExecuteModelRequest


class SPMDRayExecutor(SPMDRingExecutor):
    def _init_workers(self) -> None:
        import ray

        pc = self.config.parallel_config
        self._poll_s = envs.VLLM_WORKER_LIVENESS_POLL_S
        started = initialize_ray(pc.ray_address, pc.world_size)
        actors, group = place_actors(self.config, list(range(pc.world_size)), None)
        self._actors = actors
        self._release = _once(release, actors, group, started)
        try:
            self._health = ActorHealth(actors, first_rank=0)
            ip, port = ray.get(actors[0].node_ip_and_port.remote())
            ray.get([a.set_init_method.remote(f"tcp://{ip}:{port}") for a in actors])
            if pc.spmd_worker_niceness:
                ray.get([a.renice.remote(pc.spmd_worker_niceness) for a in actors])
        except BaseException:
            self._release()
            raise
        self._plain = not all(self._health.local)
        if not self._plain:
            super()._init_workers()
            return
        self._finalizer = weakref.finalize(self, self._release)
        self._finalizer.atexit = False
        atexit.register(self._finalizer)
        try:
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
        except BaseException:
            self._finalizer()
            raise

    def _start_ranks(self, step: RingHandle) -> list[RingHandle]:
        pc = self.config.parallel_config
        self._rings.stop_ranks = self._release
        refs = [
            a.execute_method.remote(
                start_rank_thread, step, pc.mq_max_chunk_bytes, pc.mq_spin_us
            )
            for a in self._actors
        ]
        return wait_all(refs, self._health, self._poll_s)

    def _deaths(self) -> Deaths:
        return self._health.deaths()

    def collective_rpc(
        self, method: WorkerMethod, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        if not self._plain:
            return super().collective_rpc(method, args, kwargs)
        refs = [
            a.execute_method.remote(method, *args, **(kwargs or {}))
            for a in self._actors
        ]
        return wait_all(refs, self._health, self._poll_s)

    def submit_model(self, req: ExecuteModelRequest) -> StepResult:
        if not self._plain:
            return super().submit_model(req)
        frame = STEP + messages.encode(req)
        self.bytes_sent += len(frame)
        refs = [a.execute_frame.remote(frame) for a in self._actors]
        rank = self.config.parallel_config.output_rank
        return lambda: messages.decode_output(
            wait_all(refs, self._health, self._poll_s)[rank]
        )

    def shutdown(self) -> None:
        self._finalizer()
        if self._plain:
            atexit.unregister(self._finalizer)


def _once(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on the first call only (shutdown paths may each call it)."""
    done = []

    def call() -> None:
        if not done:
            done.append(True)
            fn(*args)

    return call
