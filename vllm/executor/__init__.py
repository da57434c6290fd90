"""The pipe from the engine to the workers, and the one place that picks a backend.

``get_executor_class`` maps the frozen ``ParallelConfig`` to an executor class.
``CONTROL_PLANES`` names every way to drive the workers with the settings that select
it, so tests and benchmarks that compare control planes share one table.
"""

from dataclasses import dataclass, field

from vllm.config import VllmConfig
from vllm.executor.executor_base import Executor, WorkerDiedError

__all__ = [
    "CONTROL_PLANES",
    "ControlPlane",
    "Executor",
    "WorkerDiedError",
    "get_executor_class",
]


def get_executor_class(vllm_config: VllmConfig) -> type[Executor]:
    pc = vllm_config.parallel_config
    if pc.use_spmd_worker:
        if pc.use_compiled_dag:
            from vllm.executor.ray_spmd_executor import RaySPMDExecutor

            return RaySPMDExecutor
        if pc.distributed_executor_backend == "mp":
            from vllm.executor.spmd_executor import SPMDMultiprocExecutor

            return SPMDMultiprocExecutor
        from vllm.executor.spmd_ray_executor import SPMDRayExecutor

        return SPMDRayExecutor
    if pc.distributed_executor_backend == "uni":
        from vllm.executor.uniproc_executor import UniProcExecutor

        return UniProcExecutor
    if pc.distributed_executor_backend == "mp":
        from vllm.executor.mp_executor import MultiprocExecutor

        return MultiprocExecutor
    from vllm.executor.ray_executor import RayDriverExecutor

    return RayDriverExecutor


@dataclass(frozen=True)
class ControlPlane:
    backend: str  # --distributed-executor-backend
    env: dict[str, str] = field(default_factory=dict)  # on top of SELECTING_ENV
    spmd: bool = False  # every rank in its own process, rank 0 included


# Every environment variable that selects a control plane: a comparison clears them
# all before setting one plane's, so the caller's environment cannot leak in.
SELECTING_ENV = (
    "VLLM_USE_SPMD_WORKER",
    "VLLM_USE_RAY_SPMD_WORKER",
    "VLLM_USE_RAY_COMPILED_DAG",
)
_SPMD = {"VLLM_USE_SPMD_WORKER": "1"}

CONTROL_PLANES = {
    "uni": ControlPlane("uni"),  # one worker inside the engine process
    "mp": ControlPlane("mp"),  # legacy driver worker, other ranks spawned
    "ray": ControlPlane("ray"),  # legacy driver worker, other ranks Ray actors
    # Every rank its own process; steps through our shared-memory rings.
    "spmd_mp": ControlPlane("mp", _SPMD, spmd=True),  # spawned processes
    "spmd_ray": ControlPlane("ray", _SPMD, spmd=True),  # Ray actors
    "spmd_graph": ControlPlane(  # a Ray Compiled Graph over shared memory
        "ray", {**_SPMD, "VLLM_USE_RAY_COMPILED_DAG": "1"}, spmd=True
    ),
}


def control_plane_env(name: str) -> dict[str, str | None]:
    """The environment changes that select control plane ``name``: None unsets."""
    plane = CONTROL_PLANES[name]
    return {**dict.fromkeys(SELECTING_ENV), **plane.env}
