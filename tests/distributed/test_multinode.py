"""Tensor parallelism across Ray nodes: a two-node cluster built on this machine
with ``ray.cluster_utils.Cluster`` (one CPU a node), joined through its address,
with one rank per node (VLLM_RAY_PLACEMENT_STRATEGY=STRICT_SPREAD).

Every Ray control plane gives a single node's tokens with its ranks on two nodes:
both SPMD planes fall back to plain actor calls (a rank on another Ray node never
maps the engine's shared memory, though here it could; the compiled graph is not
used across nodes, see ray_spmd_executor._graph_allowed), and the legacy driver
keeps rank 0 in the engine with rank 1 on the other node. Removing the worker
node in the middle of a generate raises WorkerDiedError naming the lost rank
within 30 s, whether the node is stopped or killed.

Engines run in multinode_script.py, in their own interpreters: the pytest
process holds no Ray connection, and a hang fails a test instead of the run.
"""

import json
import os
import select
import subprocess
import sys
import time

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "multinode_script.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY_PLANES = ("spmd_graph", "spmd_ray", "ray")
ERROR_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args=dict(num_cpus=1, include_dashboard=False),
    )
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()


def script_env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["VLLM_RAY_ADDRESS"] = cluster.address
    env["VLLM_RAY_PLACEMENT_STRATEGY"] = "STRICT_SPREAD"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def worker_node(cluster):
    (node,) = cluster.worker_nodes
    return node


def test_one_rank_per_node_equals_a_single_node(cluster, tiny_model):
    model = tiny_model("llama_tp4")
    proc = subprocess.run(
        [sys.executable, SCRIPT, model, "equal", "uni", "mp", *RAY_PLANES],
        capture_output=True,
        text=True,
        env=script_env(cluster),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(lines[-1].split(" ", 1)[1])
    head, worker = cluster.head_node.node_id, worker_node(cluster).node_id
    # TP=1, and TP=2 on this node alone (spawned ranks, no Ray). Seeded samples
    # are compared at the same TP size only: TP=2 sums its partial results in
    # another order, and a sampled token may follow the last bit of a logit.
    uni, single = results.pop("uni"), results.pop("mp")
    assert single["greedy"] == uni["greedy"]
    for plane, got in results.items():
        assert sorted(got["nodes"]) == sorted([head, worker]), plane
        assert got["greedy"] == single["greedy"], plane
        assert got["seeded"] == single["seeded"], plane
    # Across Ray nodes the compiled graph is not used (ray_spmd_executor's
    # _graph_allowed says why): its steps went as plain actor calls.
    assert results["spmd_graph"]["graph_compiles"] == 0


class _Lines:
    """A child's stdout, read line by line against deadlines."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.seen: list[str] = []

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:  # the child exited
                    break
                self.seen.append(line)
                if line.startswith(prefix):
                    return line.split(" ", 1)[1]
        raise AssertionError(f"no {prefix} line in {timeout} s: {self.seen[-20:]}")


@pytest.mark.parametrize("graceful", [True, False], ids=["stopped", "killed"])
@pytest.mark.parametrize("plane", RAY_PLANES)
def test_node_removed_mid_generate_names_the_lost_rank(
    cluster, tiny_model, tmp_path, plane, graceful
):
    """``killed``: the node's raylet and workers get SIGKILL, so Ray learns of
    the loss only from broken connections (it declares the node dead ~15 s
    later); ``stopped``: they are terminated and the node says goodbye."""
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        try:
            result, elapsed, lost = remove_node_mid_generate(
                cluster, tiny_model("llama_tp4"), plane, graceful, stderr
            )
        except BaseException:
            stderr.seek(0)
            print(stderr.read()[-6000:])  # shown with the failure
            raise
        finally:
            # The next test starts from two nodes again.
            if not cluster.worker_nodes:
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
    assert result["type"] == "WorkerDiedError" and result["is_runtime_error"]
    assert result["message"].startswith(f"worker rank(s) [{lost}] died"), result
    assert elapsed < ERROR_WITHIN_S, (elapsed, result)


def remove_node_mid_generate(cluster, model, plane, graceful, stderr):
    """Removes the worker node a second into a long generate; returns the
    script's result, the seconds from the removal to the error, and which
    rank was on the node."""
    worker = worker_node(cluster)
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, model, "remove", plane],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=script_env(cluster),
    )
    try:
        lines = _Lines(proc)
        lost = json.loads(lines.wait_for("READY", 180)).index(worker.node_id)
        time.sleep(1.0)  # into the generate
        removed = time.monotonic()
        cluster.remove_node(worker, allow_graceful=graceful)
        result = json.loads(lines.wait_for("RESULT", ERROR_WITHIN_S + 10))
        elapsed = time.monotonic() - removed
        assert proc.wait(timeout=60) == 0  # and it shuts down, too
    finally:
        proc.kill()
        proc.wait()
    return result, elapsed, lost
