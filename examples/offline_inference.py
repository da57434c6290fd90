"""Offline generation with the bundled SmolLM2-135M-Instruct: prints each prompt's
completion and a throughput line.

    python examples/offline_inference.py [--model ...] [any engine flag]
"""

import argparse
import time

from vllm import LLM, EngineArgs, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the ocean.",
    "Explain in one sentence what a CPU cache is.",
    "List three fruits that are red:",
]


def main() -> None:
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    llm = LLM(**vars(EngineArgs.from_cli_args(args)))
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    start = time.perf_counter()
    outputs = llm.chat(
        [[{"role": "user", "content": p}] for p in PROMPTS], params, use_tqdm=True
    )
    elapsed = time.perf_counter() - start
    for prompt, out in zip(PROMPTS, outputs):
        print(f"Prompt: {prompt!r}\nGenerated: {out.outputs[0].text!r}\n")
    prompt_toks = sum(len(o.prompt_token_ids) for o in outputs)
    out_toks = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(
        f"Throughput: {len(outputs) / elapsed:.2f} requests/s, "
        f"{(prompt_toks + out_toks) / elapsed:.2f} total tokens/s, "
        f"{out_toks / elapsed:.2f} output tokens/s"
    )
    llm.shutdown()


if __name__ == "__main__":
    main()
