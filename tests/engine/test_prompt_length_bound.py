"""The bound that refuses a too-long text prompt without tokenizing it: a token
never covers more characters than its vocabulary string is long, so a text of C
characters has at least C / bound tokens. Checked on the real (bundled SmolLM2)
tokenizer, and refused where the tokenizer can shrink a text."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm.engine.input_validation import (
    InputValidator,
    RequestLimits,
    chars_per_token_bound,
    prompt_too_long,
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from vllm.transformers_utils.model_resolver import load_tokenizer

    return load_tokenizer(smollm2_path)


def test_bound_is_the_longest_vocabulary_string(tokenizer):
    bound = chars_per_token_bound(tokenizer)
    assert bound == max(len(k) for k in tokenizer.get_vocab())
    # The longest token itself, repeated, reaches the bound exactly.
    longest = max(tokenizer.get_vocab(), key=len)
    text = tokenizer.convert_tokens_to_string([longest])
    assert len(text) <= bound


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=400))
def test_no_text_has_fewer_tokens_than_the_bound_says(tokenizer, text):
    bound = chars_per_token_bound(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) * bound >= len(text)
    # prompt_too_long only speaks when even the least count reaches the limit.
    least = prompt_too_long(text, bound, max_model_len=len(ids) + 1)
    assert least is None or least <= len(ids)


def test_repeated_long_tokens_stay_above_the_bound(tokenizer):
    bound = chars_per_token_bound(tokenizer)
    spaces = " " * 5000  # whitespace runs merge into the longest tokens
    assert len(tokenizer.encode(spaces)) * bound >= len(spaces)


def test_shrinking_normalizer_or_stripping_token_gives_no_bound():
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "b": 1, "<unk>": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    assert chars_per_token_bound(PreTrainedTokenizerFast(tokenizer_object=raw)) == 5
    raw.normalizer = normalizers.NFC()  # composes "e" + accent into one char
    assert chars_per_token_bound(PreTrainedTokenizerFast(tokenizer_object=raw)) is None
    raw.normalizer = normalizers.Sequence(
        [normalizers.Prepend("_"), normalizers.Replace(" ", "_")]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert chars_per_token_bound(fast) == 5
    fast.add_special_tokens({"additional_special_tokens": ["<x>"]})
    assert chars_per_token_bound(fast) == 5
    from tokenizers import AddedToken

    fast.add_tokens([AddedToken("<s>", rstrip=True)])  # swallows following spaces
    assert chars_per_token_bound(fast) is None


def test_offline_engine_refuses_a_huge_text_without_tokenizing_it(tokenizer):
    limits = RequestLimits(
        max_model_len=2048,
        vocab_size=len(tokenizer),
        max_logprobs=20,
        eos_token_id=tokenizer.eos_token_id,
        block_size=16,
        num_kv_blocks=1000,
    )
    validator = InputValidator(limits, tokenizer)
    text = "hello " * 2_000_000  # 12M characters: seconds to tokenize
    start = time.perf_counter()
    with pytest.raises(ValueError, match="at least .* tokens.*max_model_len"):
        validator.check("r", text)
    assert time.perf_counter() - start < 0.5
    # Just under the bound it is tokenized and refused for its true length.
    text = "hello " * 3000
    n = len(tokenizer.encode(text))
    assert n >= 2048 and len(text) <= 2047 * chars_per_token_bound(tokenizer)
    with pytest.raises(ValueError, match=rf"prompt length \({n} tokens\)"):
        validator.check("r", text)
