"""The server in front of SPMD tensor parallelism (-tp 2, every rank a Ray actor
driven through a compiled graph): it serves completions and streams like TP=1,
and SIGTERM stops it with nothing left behind (Ray included)."""

import asyncio
import signal
import time

import pytest
from server_utils import RemoteServer, alive

from vllm import LLM, SamplingParams

pytestmark = pytest.mark.distributed

PROMPT = "The quick brown fox"
CHAT = [{"role": "user", "content": "Name a colour."}]


def test_tp2_spmd_server(tiny_model, tmp_path):
    model = tiny_model("llama_full_vocab")
    llm = LLM(model, kv_cache_space=0.05)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    want = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].text
    tokenizer = llm.get_tokenizer()
    llm.shutdown()

    server = RemoteServer(
        model,
        [
            "-tp",
            "2",
            "--distributed-executor-backend",
            "ray",
            "--kv-cache-space",
            "0.05",
        ],
        str(tmp_path / "server.log"),
        env={"VLLM_USE_SPMD_WORKER": "1", "VLLM_USE_RAY_COMPILED_DAG": "1"},
    )
    try:
        client = server.client(api_key="unused")
        got = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=10, temperature=0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert got.choices[0].text == want
        assert got.usage.completion_tokens == 10
        chat = client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=4, extra_body={"ignore_eos": True}
        )
        # No --chat-template: the tokenizer's own template renders it.
        assert chat.usage.prompt_tokens == len(
            tokenizer.apply_chat_template(
                CHAT, add_generation_prompt=True, return_dict=False
            )
        )
        assert chat.usage.completion_tokens == 4

        async def streams():
            aclient = server.async_client(api_key="unused")

            async def one(n: int) -> int:
                stream = await aclient.completions.create(
                    model=model, prompt=[3, 4, 5 + n], max_tokens=n, stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
                return [c async for c in stream][-1].usage.completion_tokens

            return await asyncio.gather(*(one(n) for n in (5, 9, 13)))

        assert asyncio.run(streams()) == [5, 9, 13]
        children = server.descendants()
        assert children  # Ray's processes and the worker actors
        status = server.stop(signal.SIGTERM, timeout=60)
    finally:
        if server.proc.poll() is None:
            server.kill()
    log = server.output()
    assert status == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    deadline = time.monotonic() + 15
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(children) == []
