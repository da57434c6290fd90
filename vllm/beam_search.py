"""Beam search built from one-token steps, as vLLM builds it: each step asks
the engine for one token of every live beam with its top ``2 * beam_width``
logprobs, and keeps the ``beam_width`` best continuations. Every step's prompt
is the previous one plus one token, so with ``--enable-prefix-caching`` each
step computes one new token per beam instead of the whole sequence.

``BeamSearch`` holds the search and is driven by the caller (``LLM.beam_search``
through the engine's steps, the server through ``AsyncLLMEngine``)."""

import math
from dataclasses import dataclass, field

from vllm.field_checks import check_bool, check_float, check_int
from vllm.sampling_params import SamplingParams


@dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.beam_width = check_int("beam_width", self.beam_width, low=1)
        self.max_tokens = check_int("max_tokens", self.max_tokens, low=1)
        self.temperature = check_float("temperature", self.temperature, low=0.0)
        self.length_penalty = check_float("length_penalty", self.length_penalty)
        check_bool("ignore_eos", self.ignore_eos)


@dataclass
class BeamSearchSequence:
    tokens: list[int]  # the prompt's, then the generated ones
    num_prompt_tokens: int
    cum_logprob: float = 0.0
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS) or "length"
    text: str = ""

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]  # best first


def beam_score(seq: BeamSearchSequence, eos_token_id: int | None, penalty: float):
    """Orders sequences as vLLM's score does, cumulative logprob over
    length ** length_penalty (the length counting the prompt and not a final
    EOS), computed in the log domain: length ** penalty over- or underflows for
    a large |penalty|. Larger is better."""
    length = len(seq.tokens)
    if eos_token_id is not None and seq.tokens[-1] == eos_token_id:
        length -= 1
    if seq.cum_logprob >= 0:
        return math.inf
    # cum / length**p < 0: the smaller log(-cum) - p * log(length), the better.
    return -(math.log(-seq.cum_logprob) - penalty * math.log(max(length, 1)))


class BeamSearch:
    def __init__(
        self,
        prompt_token_ids: list[int],
        params: BeamSearchParams,
        eos_token_id: int | None,
        max_model_len: int,
    ):
        self.params = params
        self.eos = None if params.ignore_eos else eos_token_id
        self.room = min(params.max_tokens, max_model_len - len(prompt_token_ids))
        self.beams = [BeamSearchSequence(list(prompt_token_ids), len(prompt_token_ids))]
        self.completed: list[BeamSearchSequence] = []
        self.steps = 0

    @property
    def done(self) -> bool:
        return not self.beams or self.steps >= self.room

    def step_params(self) -> SamplingParams:
        """One token, with the top 2 * beam_width logprobs of its position."""
        return SamplingParams(
            max_tokens=1,
            logprobs=2 * self.params.beam_width,
            temperature=self.params.temperature,
            ignore_eos=True,
        )

    def step_prompts(self) -> list[list[int]]:
        return [beam.tokens for beam in self.beams]

    def advance(self, positions: list[dict[int, float]]) -> None:
        """``positions[i]``: token id -> logprob at the next position of beam i."""
        candidates = []
        for beam, position in zip(self.beams, positions):
            for token, logprob in position.items():
                candidates.append(
                    BeamSearchSequence(
                        beam.tokens + [token],
                        beam.num_prompt_tokens,
                        beam.cum_logprob + logprob,
                        beam.logprobs + [position],
                    )
                )
        candidates.sort(key=lambda s: s.cum_logprob, reverse=True)
        width = self.params.beam_width
        self.steps += 1
        beams = []
        for seq in candidates[: 2 * width]:
            if self.eos is not None and seq.tokens[-1] == self.eos:
                seq.finish_reason = "stop"
                self.completed.append(seq)
            elif len(beams) < width:
                beams.append(seq)
        self.beams = beams

    def result(self, tokenizer) -> BeamSearchOutput:
        for beam in self.beams:
            beam.finish_reason = "length"
        pool = self.completed + self.beams
        pool.sort(
            key=lambda s: beam_score(s, self.eos, self.params.length_penalty),
            reverse=True,
        )
        best = pool[: self.params.beam_width]
        for seq in best:
            tokens = seq.output_tokens
            if (
                seq.finish_reason == "stop"
                and not self.params.include_stop_str_in_output
            ):
                tokens = tokens[:-1]
            seq.text = tokenizer.decode(
                tokens, skip_special_tokens=self.params.skip_special_tokens
            )
        return BeamSearchOutput(best)
