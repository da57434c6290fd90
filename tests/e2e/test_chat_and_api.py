"""The LLM API as vLLM users call it: prompt forms, per-prompt SamplingParams, output
order and fields, and chat through the tokenizer's template."""

import pytest

from vllm import LLM, CompletionOutput, RequestOutput, SamplingParams

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]
OTHER_CONVERSATION = [{"role": "user", "content": "What is 2 + 2?"}]
pytestmark = pytest.mark.slow  # loads SmolLM2

TEXTS = ["The capital of France is", "def add(a, b):", "Roses are red,"]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    engine = LLM(smollm2_path, kv_cache_space=0.25, max_model_len=512)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def singles(llm) -> dict[str, list[int]]:
    """Each text's 6 greedy tokens when generated on its own."""
    return {
        t: llm.generate(t, _greedy(6), use_tqdm=False)[0].outputs[0].token_ids
        for t in TEXTS
    }


def test_chat_uses_the_chat_template(llm):
    tokenizer = llm.get_tokenizer()
    out = llm.chat(CONVERSATION, _greedy(4), use_tqdm=False)
    assert len(out) == 1
    want_ids = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    want_text = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=False
    )
    assert out[0].prompt_token_ids == list(want_ids)
    assert out[0].prompt == want_text
    assert want_text.rstrip().endswith("assistant")  # the generation prompt


def test_chat_batch_in_order_and_answers(llm):
    conversations = [CONVERSATION, OTHER_CONVERSATION]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    outs = llm.chat(conversations, params, use_tqdm=False)
    singles = [llm.chat(c, params, use_tqdm=False)[0] for c in conversations]
    assert [o.prompt_token_ids for o in outs] == [s.prompt_token_ids for s in singles]
    assert [o.outputs[0].text for o in outs] == [s.outputs[0].text for s in singles]
    # The model answers as the assistant and ends its turn with EOS.
    answer = outs[1].outputs[0]
    assert answer.finish_reason == "stop" and "4" in answer.text


def test_prompt_forms_agree(llm, singles):
    tokenizer = llm.get_tokenizer()
    text = TEXTS[0]
    ids = tokenizer.encode(text)
    forms = [text, [text], {"prompt": text}, {"prompt_token_ids": ids}]
    for form in forms:
        out = llm.generate(form, _greedy(6), use_tqdm=False)
        assert len(out) == 1
        assert out[0].prompt_token_ids == ids
        assert out[0].outputs[0].token_ids == singles[text]
    # A prompt given as ids has no text to report.
    assert (
        llm.generate({"prompt_token_ids": ids}, _greedy(2), use_tqdm=False)[0].prompt
        is None
    )


def test_outputs_in_input_order_with_per_prompt_params(llm, singles):
    # Descending lengths: the last prompt finishes first, yet comes back last.
    lengths = [6, 4, 2]
    params = [_greedy(n) for n in lengths]
    outs = llm.generate(TEXTS, params, use_tqdm=False)
    assert [o.prompt for o in outs] == TEXTS
    for out, text, n in zip(outs, TEXTS, lengths):
        assert out.outputs[0].token_ids == singles[text][:n]
    ids = {o.request_id for o in outs}
    assert len(ids) == len(TEXTS)


def test_default_sampling_params(llm):
    # vLLM's defaults: temperature 1, at most 16 tokens, one completion.
    out = llm.generate(TEXTS[2], use_tqdm=False)[0]
    assert len(out.outputs) == 1
    assert 1 <= len(out.outputs[0].token_ids) <= 16


def test_output_fields(llm):
    text = TEXTS[1]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    out = llm.generate(text, params, use_tqdm=False)[0]
    assert isinstance(out, RequestOutput)
    assert isinstance(out.request_id, str)
    assert out.prompt == text
    assert out.prompt_token_ids == llm.get_tokenizer().encode(text)
    assert out.prompt_logprobs is None
    assert out.finished is True
    (completion,) = out.outputs
    assert isinstance(completion, CompletionOutput)
    assert completion.index == 0
    assert completion.text == llm.get_tokenizer().decode(
        completion.token_ids, skip_special_tokens=True
    )
    assert completion.cumulative_logprob is None and completion.logprobs is None
    assert completion.finish_reason == "length" and completion.stop_reason is None
    assert completion.finished()
