"""Worker processes start in a fresh interpreter that imports only vllm: a TP script
piped to ``python -`` (no file to re-import) and without an
``if __name__ == "__main__"`` guard runs on the mp backend."""

import subprocess
import sys
import textwrap


def test_tp_script_from_stdin_without_main_guard(tiny_model):
    script = textwrap.dedent(
        f"""
        from vllm import LLM, SamplingParams
        llm = LLM({tiny_model("llama_tp4")!r}, tensor_parallel_size=2,
                  distributed_executor_backend="mp", kv_cache_space=0.02,
                  max_model_len=128)
        params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
        out = llm.generate({{"prompt_token_ids": [5, 6, 7]}}, params, use_tqdm=False)
        pids = llm.llm_engine.executor.collective_rpc("get_pid")
        print("TOKENS", len(out[0].outputs[0].token_ids), "RANKS", len(set(pids)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TOKENS 5 RANKS 2" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
