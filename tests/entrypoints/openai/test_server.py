"""The OpenAI-compatible server, called with the official ``openai`` client and
raw HTTP against a live subprocess (``vllm serve``) on a tiny random Llama."""

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import time

import openai
import pytest
from server_utils import API_KEY, REPO, scrape

from vllm import LLM, SamplingParams

# A chat template of our own, given inline to --chat-template.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NAMES = ["tiny-llama", "tiny-alias"]
SERVER_ARGS = [
    "--api-key", API_KEY, "--kv-cache-space", "0.1", "--max-num-seqs", "64",
    "--served-model-name", *NAMES, "--chat-template", TEMPLATE,
]  # fmt: skip
MAX_MODEL_LEN = 2048  # the tiny checkpoint's max_position_embeddings
PROMPT = "The quick brown fox"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]
IGNORE_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def model(server) -> str:
    return server.client().models.list().data[0].id


@pytest.fixture(scope="module")
def offline(tiny_model):
    """The same checkpoint run offline through LLM, for reference outputs."""
    llm = LLM(tiny_model("llama_full_vocab"), kv_cache_space=0.05)
    yield llm
    llm.shutdown()


def raw_post(server, path: str, body: bytes | str, key: str = API_KEY):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    conn.request("POST", path, body, headers)
    resp = conn.getresponse()
    status, data = resp.status, resp.read()
    conn.close()
    return status, json.loads(data)


def test_models_health_version(server):
    for path in ("/health", "/version", "/metrics"):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.request("GET", path)  # no key needed outside /v1
        assert conn.getresponse().status == 200, path
    client = server.client()
    assert [c.id for c in client.models.list().data] == NAMES
    # Any served name is accepted; responses report the first.
    got = client.completions.create(model=NAMES[1], prompt=PROMPT, max_tokens=2)
    assert got.model == NAMES[0]


def test_completion_matches_offline_engine(server, model, offline):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    want = offline.generate(PROMPT, params, use_tqdm=False)[0]
    got = server.client().completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body=IGNORE_EOS
    )
    assert got.object == "text_completion" and got.id.startswith("cmpl-")
    assert [c.text for c in got.choices] == [want.outputs[0].text]
    assert got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == 12
    assert got.usage.total_tokens == got.usage.prompt_tokens + 12


def test_chat_matches_offline_engine(server, model, offline):
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    want = offline.chat(CHAT, params, use_tqdm=False, chat_template=TEMPLATE)[0]
    assert want.prompt.startswith("<|system|>You are terse.")
    got = server.client().chat.completions.create(
        model=model, messages=CHAT, max_tokens=10, temperature=0, extra_body=IGNORE_EOS
    )
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.outputs[0].text
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == 10


def test_streaming_equals_whole_response(server, model):
    client = server.client()
    kwargs = dict(model=model, max_tokens=14, temperature=0, extra_body=IGNORE_EOS)
    whole = client.completions.create(prompt=PROMPT, **kwargs).choices[0].text
    chunks = list(
        client.completions.create(
            prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 14

    whole = client.chat.completions.create(messages=CHAT, **kwargs)
    chunks = list(client.chat.completions.create(messages=CHAT, stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n2_seeded(server, model):
    client = server.client()
    kwargs = dict(
        model=model, prompt=PROMPT, n=2, max_tokens=8, temperature=1.0, seed=7
    )
    first = client.completions.create(extra_body=IGNORE_EOS, **kwargs)
    again = client.completions.create(extra_body=IGNORE_EOS, **kwargs)
    assert sorted(c.index for c in first.choices) == [0, 1]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.usage.completion_tokens == 16
    stream = client.completions.create(stream=True, extra_body=IGNORE_EOS, **kwargs)
    texts, reasons = {0: "", 1: ""}, {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in first.choices}
    assert reasons == {0: "length", 1: "length"}
    chat = client.chat.completions.create(
        model=model, messages=CHAT, n=2, max_tokens=5, extra_body=IGNORE_EOS
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]
    assert chat.usage.completion_tokens == 10


def test_logprobs(server, model):
    client = server.client()
    got = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
        extra_body=IGNORE_EOS,
    )  # fmt: skip
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert lp.text_offset == sorted(lp.text_offset)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0.0 and 1 <= len(top) <= 4
        # greedy: the chosen token is the most likely one
        assert top[token] == pytest.approx(value) == pytest.approx(max(top.values()))
    chat = client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=2, extra_body=IGNORE_EOS,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode(errors="replace") == entry.token


def test_stop_strings(server, model):
    client = server.client()
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
    text = client.completions.create(extra_body=IGNORE_EOS, **kwargs).choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.index(stop)]
    got = client.completions.create(stop=[stop], extra_body=IGNORE_EOS, **kwargs)
    assert got.choices[0].text == expected
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[0].model_extra["stop_reason"] == stop
    chunks = client.completions.create(
        stop=stop, stream=True, extra_body=IGNORE_EOS, **kwargs
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected


BAD_COMPLETIONS = [
    # (request fields, the param the error names)
    (dict(model="no-such-model"), "model"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(logprobs=50), "logprobs"),
    (dict(logprobs=21), "logprobs"),  # the engine's --max-logprobs, 20
    (dict(n=100000), "n"),  # more completions than the KV cache holds at once
    (dict(extra_body={"stop_token_ids": [5, 10**6]}), "stop_token_ids"),
    (dict(presence_penalty=5.0), "presence_penalty"),
    (dict(max_tokens=MAX_MODEL_LEN), "max_tokens"),  # prompt + output > context
    (dict(prompt=[5] * MAX_MODEL_LEN), "prompt"),  # prompt alone fills it
    (dict(prompt=[]), "prompt"),
    (dict(temperature="hot"), "temperature"),  # wrong type
    (dict(stream_options={"include_usage": True}), "stream_options"),
]


async def _stream_token_count(client, model: str, prompt, max_tokens: int) -> tuple:
    """Streams a completion with per-token logprobs; -> (tokens seen in the
    chunks, usage.completion_tokens, last finish_reason)."""
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, stream=True, logprobs=0,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
    )  # fmt: skip
    seen, usage, reason = 0, None, None
    async for chunk in stream:
        for choice in chunk.choices:
            seen += len(choice.logprobs.tokens)
            reason = choice.finish_reason or reason
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return seen, usage, reason


def test_errors_are_openai_style_and_harmless(server, model):
    async def run():
        client = server.async_client()
        other = asyncio.ensure_future(_stream_token_count(client, model, PROMPT, 200))
        for fields, param in BAD_COMPLETIONS:
            body = {"model": model, "prompt": PROMPT, **fields}
            with pytest.raises(openai.BadRequestError) as info:
                await client.completions.create(**body)
            assert info.value.status_code == 400, fields
            assert info.value.body["type"] == "invalid_request_error"
            assert param in (info.value.body["param"] or info.value.message), fields
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model=model, messages=CHAT, top_logprobs=2
            )
        with pytest.raises(openai.AuthenticationError) as info:
            await server.async_client(api_key="wrong").completions.create(
                model=model, prompt=PROMPT
            )
        assert info.value.status_code == 401
        return await other

    assert asyncio.run(run()) == (200, 200, "length")
    status, body = raw_post(server, "/v1/completions", b'{"prompt": "x", ')
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert "JSON" in body["error"]["message"]
    status, body = raw_post(server, "/v1/chat/completions", json.dumps({"messages": 3}))
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = raw_post(server, "/v1/completions", "{}", key="wrong")
    assert status == 401 and body["error"]["type"] == "authentication_error"


def test_concurrent_streams_complete(server, model):
    async def run():
        client = server.async_client()
        lengths = [4 + i % 13 for i in range(32)]
        prompts = [[100 + i, 200 + i, 300 + i] for i in range(32)]
        return lengths, await asyncio.gather(
            *(
                _stream_token_count(client, model, p, n)
                for p, n in zip(prompts, lengths)
            )
        )

    lengths, results = asyncio.run(run())
    assert results == [(n, n, "length") for n in lengths]


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_and_frees_blocks(server, stream):
    before = scrape(server)
    abort_key = 'vllm:request_success_total{finished_reason="abort"}'
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    body = {"prompt": [7, 8, 9], "max_tokens": MAX_MODEL_LEN - 3, "stream": stream}
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({**body, **IGNORE_EOS}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        events = 0
        while events < 3:
            events += resp.readline().startswith(b"data: ")
    else:  # nothing comes back before the end: watch the engine instead
        deadline = time.monotonic() + 20
        while scrape(server)["vllm:generation_tokens_total{}"] < (
            before["vllm:generation_tokens_total{}"] + 3
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    during = scrape(server)
    assert during["vllm:num_requests_running{}"] == 1
    assert during["vllm:kv_cache_usage_perc{}"] > 0
    conn.sock.close()  # the client goes away mid-request
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = scrape(server)
        if after.get(abort_key, 0) > before.get(abort_key, 0):
            break
        time.sleep(0.1)
    assert after[abort_key] == before.get(abort_key, 0) + 1
    assert after["vllm:num_requests_running{}"] == 0
    assert after["vllm:num_requests_waiting{}"] == 0
    assert after["vllm:kv_cache_usage_perc{}"] == 0.0  # every block is free again
    made = (
        after["vllm:generation_tokens_total{}"]
        - before["vllm:generation_tokens_total{}"]
    )
    assert 3 <= made < MAX_MODEL_LEN - 3


def test_metrics_move_with_a_request(server, model):
    before = scrape(server)
    got = server.client().completions.create(
        model=model, prompt=PROMPT, max_tokens=9, extra_body=IGNORE_EOS
    )
    after = scrape(server)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("vllm:prompt_tokens_total{}") == got.usage.prompt_tokens
    assert delta("vllm:generation_tokens_total{}") == 9
    assert delta('vllm:request_success_total{finished_reason="length"}') == 1
    assert delta("vllm:time_to_first_token_seconds_count{}") == 1
    assert delta("vllm:inter_token_latency_seconds_count{}") == 8
    assert delta("vllm:e2e_request_latency_seconds_count{}") == 1
    assert delta("vllm:e2e_request_latency_seconds_sum{}") > 0
    key = 'http_requests_total{handler="/v1/completions",method="POST",status="200"}'
    assert delta(key) == 1
    assert after["vllm:num_requests_running{}"] == 0
    assert after["vllm:kv_cache_usage_perc{}"] == 0.0


def test_benchmark_serving_against_server(server, tiny_model):
    """benchmarks/benchmark_serving.py end to end: vLLM's result lines, every
    request served, exact token totals (ids in, ignore_eos out)."""
    script = os.path.join(REPO, "benchmarks", "benchmark_serving.py")
    env = dict(os.environ, OPENAI_API_KEY=API_KEY, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable, script, "--base-url", server.base_url, "--num-prompts", "12",
        "--random-input-len", "16", "--random-output-len", "8", "--ignore-eos",
        "--request-rate", "50", "--disable-tqdm",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout

    def value(label: str) -> float:
        found = re.findall(rf"^{re.escape(label)}\s+([0-9.]+)\s*$", out, re.M)
        assert len(found) == 1, (label, out)
        return float(found[0])

    assert "============ Serving Benchmark Result ============" in out
    assert value("Successful requests:") == 12
    assert value("Failed requests:") == 0
    assert value("Total input tokens:") == 12 * 16
    assert value("Total generated tokens:") == 12 * 8
    duration = value("Benchmark duration (s):")
    assert value("Request throughput (req/s):") == pytest.approx(12 / duration, 0.02)
    assert value("Output token throughput (tok/s):") == pytest.approx(
        96 / duration, 0.02
    )
    for metric in ("TTFT", "TPOT", "ITL"):
        mean, median, p99 = (
            value(f"{kind} {metric} (ms):") for kind in ("Mean", "Median", "P99")
        )
        assert 0 < median <= p99 and 0 < mean <= p99
