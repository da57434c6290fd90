"""vLLM's request fields, endpoints and metrics against a live server with the
openai client (the behaviour vLLM's tests/entrypoints/openai describe, checked
here on a tiny random Llama)."""

import threading
import time

import openai
import pytest
import requests
from server_utils import API_KEY, scrape

from vllm import LLM, BeamSearchParams

SERVER_ARGS = [
    "--api-key", API_KEY, "--kv-cache-space", "0.1", "--enable-prefix-caching",
    "--enable-prompt-tokens-details", "--enable-server-load-tracking",
    "--max-logprobs", "-1",
]  # fmt: skip
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "The quick brown fox"
CHAT = [{"role": "user", "content": "Name a colour."}]
GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})
VOCAB = 49152  # llama_full_vocab


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.url(path), json=body, headers=HEADERS, timeout=60)


def test_echo_with_logprobs_and_prompt_logprobs(client, model):
    got = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=3, logprobs=2, echo=True,
        extra_body={"ignore_eos": True, "return_token_ids": True, "prompt_logprobs": 1},
        temperature=0,
    )  # fmt: skip
    choice = got.choices[0]
    prompt_ids, out_ids = choice.prompt_token_ids, choice.token_ids
    assert len(out_ids) == 3 and choice.text.startswith(PROMPT)
    lp = choice.logprobs
    # The prompt's tokens come first: the very first has no logprob.
    assert len(lp.tokens) == len(prompt_ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    # prompt_logprobs: one entry per prompt position, each holding its token.
    plp = choice.prompt_logprobs
    assert len(plp) == len(prompt_ids) and plp[0] is None
    for pos, entry in enumerate(plp[1:], start=1):
        assert str(prompt_ids[pos]) in entry
        assert entry[str(prompt_ids[pos])]["logprob"] == pytest.approx(
            lp.token_logprobs[pos], abs=1e-4
        )
    assert got.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_prompt_logprobs_token_ids_and_echo(client, model):
    got = client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=4,
        extra_body={"prompt_logprobs": 0, "return_token_ids": True, "ignore_eos": True},
    )  # fmt: skip
    body = got.model_dump()
    assert len(body["prompt_logprobs"]) == len(body["prompt_token_ids"]) > 1
    assert len(got.choices[0].token_ids) == got.usage.completion_tokens == 4
    saying = "An apple a day keeps"
    convo = CHAT + [{"role": "assistant", "content": saying}]
    cont = dict(add_generation_prompt=False, continue_final_message=True)
    echoed = client.chat.completions.create(
        model=model, messages=convo, max_tokens=3,
        extra_body={"echo": True, "ignore_eos": True, **cont},
    )  # fmt: skip
    plain = client.chat.completions.create(
        model=model, messages=convo, max_tokens=3, temperature=0,
        extra_body={"ignore_eos": True, **cont},
    )  # fmt: skip
    assert echoed.choices[0].message.content.startswith(saying)
    assert not plain.choices[0].message.content.startswith(saying)
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(
            model=model, messages=convo, extra_body={"continue_final_message": True}
        )


def test_tokens_as_ids_logprob_token_ids_allowed_ids(client, model):
    got = client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=1, logprobs=True, top_logprobs=3,
        temperature=0,
        extra_body={
            "logprob_token_ids": [100, 1000], "allowed_token_ids": [42],
            "return_tokens_as_token_ids": True,
        },
    )  # fmt: skip
    position = got.choices[0].logprobs.content[0]
    assert position.token == "token_id:42"
    assert {t.token for t in position.top_logprobs} == {
        "token_id:42", "token_id:100", "token_id:1000"
    }  # fmt: skip
    assert all(t.logprob > -1e4 for t in position.top_logprobs)


def test_logit_bias_applies_and_is_validated(client, model):
    ids = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, logit_bias={"777": 100},
        extra_body={"return_token_ids": True, "ignore_eos": True}, temperature=0,
    ).choices[0].token_ids  # fmt: skip
    assert ids == [777] * 4
    for bias, words in [
        ({str(VOCAB + 1): 1}, [str(VOCAB + 1), str(VOCAB), "out of vocabulary"]),
        ({"bad1": 1, "bad2": 2}, ["bad1", "bad2", "logit_bias"]),
        ({"5": 101}, ["logit_bias", "[-100.0, 100.0]"]),
        ({"5": "x"}, ["logit_bias"]),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=model, prompt=PROMPT, logit_bias=bias)
        for word in words:
            assert word in str(err.value)


def test_messages_name_vocabulary_and_seed_bounds(client, model):
    with pytest.raises(openai.BadRequestError, match=r"out of vocabulary.*49152"):
        client.completions.create(model=model, prompt=[999999], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="9223372036854775807"):
        client.completions.create(model=model, prompt=PROMPT, seed=2**63)


@pytest.mark.parametrize(
    "field, value",
    [
        ("response_format", {"type": "json_object"}),
        ("structured_outputs", {"regex": "a+"}),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("bad_words", ["x"]),
        ("suffix", "end"),
        ("priority", 3),
    ],
)
def test_unsupported_fields_are_refused_by_name(server, model, field, value):
    for path, body in [
        ("/v1/completions", {"prompt": PROMPT}),
        ("/v1/chat/completions", {"messages": CHAT}),
    ]:
        resp = post(server, path, {**body, "model": model, field: value})
        # Not a field of that endpoint in vLLM either: ignored as unknown.
        if (field, "chat" in path) in {("suffix", True), ("tools", False)}:
            assert resp.status_code == 200
            continue
        assert resp.status_code == 400, (path, field, resp.text)
        error = resp.json()["error"]
        assert error["param"] == field and field in error["message"]


def test_stream_usage_as_vllm_sends_it(client, model):
    def usages(options):
        stream = client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=3, stream=True,
            stream_options=options, extra_body={"ignore_eos": True},
        )  # fmt: skip
        return [(len(c.choices), c.usage) for c in stream]

    assert all(
        u is None
        for _, u in usages({"include_usage": False, "continuous_usage_stats": True})
    )
    chunks = usages({"include_usage": True, "continuous_usage_stats": True})
    assert all(u is not None for _, u in chunks)
    assert chunks[-1][0] == 0 and chunks[-1][1].completion_tokens == 3
    only_last = usages({"include_usage": True})
    assert [u is None for _, u in only_last] == [True] * (len(only_last) - 1) + [False]
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        client.completions.create(
            model=model, prompt=PROMPT, stream_options={"include_usage": True}
        )


def test_beam_search_matches_offline(client, model, tiny_model):
    got = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, n=2,
        extra_body={
            "use_beam_search": True, "ignore_eos": True, "return_token_ids": True
        },
    )  # fmt: skip
    llm = LLM(tiny_model("llama_full_vocab"), kv_cache_space=0.05)
    try:
        params = BeamSearchParams(beam_width=2, max_tokens=4, ignore_eos=True)
        (want,) = llm.beam_search([PROMPT], params)
    finally:
        llm.shutdown()
    assert [c.token_ids for c in got.choices] == [
        s.output_tokens for s in want.sequences
    ]
    assert got.choices[0].token_ids != got.choices[1].token_ids
    with pytest.raises(openai.BadRequestError, match="streaming"):
        client.completions.create(
            model=model,
            prompt=PROMPT,
            stream=True,
            extra_body={"use_beam_search": True},
        )


def test_tokenize_detokenize_ping_invocations_batch(server, model):
    tok = post(server, "/tokenize", {"model": model, "prompt": PROMPT}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 2048
    back = post(server, "/detokenize", {"model": model, "tokens": tok["tokens"]}).json()
    assert back["prompt"].endswith(PROMPT)
    chat_tok = post(server, "/tokenize", {"messages": CHAT}).json()
    assert chat_tok["count"] > tok["count"]
    bad = post(server, "/detokenize", {"tokens": [VOCAB]})
    assert bad.status_code == 400 and "out of vocabulary" in bad.text
    for method in (requests.get, requests.post):
        assert method(server.url("/ping"), timeout=10).status_code == 200
    done = post(server, "/invocations", {"prompt": PROMPT, "max_tokens": 2})
    assert done.json()["object"] == "text_completion"
    done = post(server, "/invocations", {"messages": CHAT, "max_tokens": 2})
    assert done.json()["object"] == "chat.completion"
    assert post(server, "/invocations", {"x": 1}).status_code == 400
    batch = post(
        server, "/v1/chat/completions/batch",
        {"model": model, "messages": [CHAT, CHAT + CHAT], "max_tokens": 2},
    ).json()  # fmt: skip
    assert batch["object"] == "chat.completion"
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    one = post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2})
    two = post(
        server, "/v1/chat/completions", {"messages": CHAT + CHAT, "max_tokens": 2}
    )
    assert batch["usage"]["prompt_tokens"] == sum(
        r.json()["usage"]["prompt_tokens"] for r in (one, two)
    )


def test_server_load_counts_requests_in_flight(server, model):
    load = lambda: requests.get(server.url("/load"), timeout=10).json()["server_load"]  # noqa: E731
    assert load() == 0
    body = {"model": model, "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True}
    worker = threading.Thread(target=post, args=(server, "/v1/completions", body))
    worker.start()
    seen = 0
    for _ in range(100):
        seen = max(seen, load())
        if seen:
            break
        time.sleep(0.01)
    worker.join()
    assert seen == 1 and load() == 0


def test_metrics_with_vllm_names_and_counts(server, client, model):
    before = scrape(server)
    for _ in range(3):
        client.completions.create(
            model=model, prompt=[7, 8, 9, 10], max_tokens=5, **GREEDY
        )
    after = scrape(server)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    assert delta("vllm:request_prompt_tokens_sum{}") == 12
    assert delta("vllm:request_generation_tokens_sum{}") == 15
    assert delta("vllm:request_params_max_tokens_sum{}") == 15
    assert delta("vllm:request_params_n_count{}") == 3
    assert delta("vllm:iteration_tokens_total_sum{}") == 3 * (4 + 5)
    assert delta("vllm:iteration_tokens_total_count{}") == 3 * 5
    for name in ("queue", "prefill", "decode", "inference"):
        assert delta(f"vllm:request_{name}_time_seconds_count{{}}") == 3
    assert delta("vllm:prefix_cache_queries_total{}") == 12
    assert delta("vllm:prefix_cache_hits_total{}") >= 0
    assert "vllm:num_preemptions_total{}" in after
    assert any(k.startswith("vllm:cache_config_info{") for k in after)
    assert "vllm:time_per_output_token_seconds_count{}" not in after  # hidden
