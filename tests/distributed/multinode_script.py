"""Run by test_multinode.py in its own interpreter: an engine that joins the test's
Ray cluster as a driver, away from the Ray state of the pytest process.

Usage:
  multinode_script.py MODEL equal PLANE...   each plane in turn (``uni``: TP=1,
      no Ray); prints ``RESULT {json}``: per plane, the tokens of the shared
      workload and the Ray node id of each rank.
  multinode_script.py MODEL remove PLANE     prints ``READY {json}`` (the ranks'
      node ids), then generates until the test removes a node; prints
      ``RESULT {json}``: the error's type and message.

The cluster's address comes in VLLM_RAY_ADDRESS, the placement strategy in
VLLM_RAY_PLACEMENT_STRATEGY.
"""

import json
import os
import sys

# Run as a script: its folder is on sys.path, so its sibling imports by name.
from death_script import generate_until_error


def select_plane(plane: str) -> None:
    from vllm.executor import control_plane_env

    for key, value in control_plane_env(plane).items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


def make_llm(model: str, plane: str, **kwargs):
    from vllm import LLM
    from vllm.executor import CONTROL_PLANES

    select_plane(plane)
    return LLM(
        model,
        tensor_parallel_size=1 if plane == "uni" else 2,
        distributed_executor_backend=CONTROL_PLANES[plane].backend,
        dtype="float32",
        **kwargs,
    )


def rank_nodes(llm) -> list[str]:
    """Each rank's Ray node id, read from the executor's actor health record;
    the legacy driver's rank 0 is on the engine's node."""
    import ray

    executor = llm.llm_engine.executor
    health = getattr(executor, "_health", None)
    if health is None:
        health = getattr(getattr(executor, "_group", None), "remote", None)
        health = getattr(health, "health", None)
    if health is None:  # uni: no Ray at all
        return []
    nodes = list(health.node_ids)
    if health.first_rank == 1:
        nodes.insert(0, ray.get_runtime_context().get_node_id())
    return nodes


def graph_compiles(llm) -> int | None:
    stats = getattr(llm.llm_engine.executor, "graph_stats", None)
    return None if stats is None else stats.compiles


def equal(model: str, planes: list[str]) -> dict:
    from tests.distributed.workloads import tp_requests

    prompts, greedy, seeded = tp_requests()
    results = {}
    for plane in planes:
        llm = make_llm(model, plane, kv_cache_space=0.02)
        try:
            outs = llm.generate(prompts, greedy, use_tqdm=False)
            samples = llm.generate(prompts, seeded, use_tqdm=False)
            results[plane] = {
                "greedy": [o.outputs[0].token_ids for o in outs],
                "seeded": [o.outputs[0].token_ids for o in samples],
                "nodes": rank_nodes(llm),
                "graph_compiles": graph_compiles(llm),
            }
        finally:
            llm.shutdown()
    return results


def remove(model: str, plane: str) -> dict:
    from vllm import SamplingParams

    llm = make_llm(model, plane, kv_cache_space=0.05, load_format="dummy")
    print("READY", json.dumps(rank_nodes(llm)), flush=True)
    # Long enough to outlast the removal: the test removes the node once READY.
    result = generate_until_error(llm, SamplingParams(max_tokens=1800, ignore_eos=True))
    result["generate_s"] = result.pop("elapsed_s")
    # Before shutdown, so the test times the error alone.
    print("RESULT", json.dumps(result), flush=True)
    llm.shutdown()
    return result


def main() -> None:
    model, mode, planes = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "equal":
        print("RESULT", json.dumps(equal(model, planes)), flush=True)
    else:
        remove(model, planes[0])


if __name__ == "__main__":
    main()
