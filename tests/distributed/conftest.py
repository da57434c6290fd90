"""Fixtures shared by the distributed tests."""

import pytest


@pytest.fixture(scope="module")
def shared_ray():
    """One Ray for a module: the backends join it instead of starting their own.
    Use it with ``pytestmark = pytest.mark.usefixtures("shared_ray")``; tests that
    start engines in subprocesses (which start their own Ray) do not."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
