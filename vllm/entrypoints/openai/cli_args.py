"""Flags of the OpenAI-compatible server: its own, then every engine flag."""

import argparse
import os

from vllm.engine.arg_utils import EngineArgs

# A prompt fills max_model_len long before this (8192 tokens are ~50 KB of JSON
# ids); the room is for batches of prompts and long conversations.
DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]


def make_arg_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("--host", type=str, default=None, help="address to bind (default: all)")
    add("--port", type=int, default=8000)
    add(
        "--api-key",
        type=str,
        default=None,
        help="if set, /v1/* requests need 'Authorization: Bearer <key>'",
    )
    add(
        "--served-model-name",
        nargs="+",
        default=None,
        help="names the API accepts in 'model' (the first is reported); "
        "default: --model as given",
    )
    add(
        "--chat-template",
        type=str,
        default=None,
        help="Jinja chat template, or a file holding one; default: the tokenizer's",
    )
    add(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BODY_BYTES,
        help="larger request bodies get 413 before they are read "
        f"(default {DEFAULT_MAX_REQUEST_BODY_BYTES})",
    )
    add("--uvicorn-log-level", choices=LOG_LEVELS, default="info")
    add(
        "--disable-uvicorn-access-log",
        action="store_true",
        help="do not log one line per HTTP request",
    )
    _add_vllm_compat_flags(add)
    return EngineArgs.add_cli_args(parser)


class _Refuse(argparse.Action):
    """A vLLM flag this server cannot honour: exits at start, saying why."""

    def __init__(self, option_strings, dest, why: str, **kwargs):
        kwargs.setdefault("nargs", 0)
        super().__init__(option_strings, dest, **kwargs)
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported: {self.why}")


class _ChunkedPrefill(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            parser.error(
                "--no-enable-chunked-prefill: chunked prefill is always on here "
                "(each step catches every request up within --max-num-batched-tokens)"
            )
        super().__call__(parser, namespace, values, option_string)


def _add_vllm_compat_flags(add) -> None:
    """Flags vLLM users pass, with vLLM's meaning where it applies here."""
    add(
        "--return-tokens-as-token-ids",
        action="store_true",
        help="logprobs name tokens as 'token_id:N' (per request: "
        "return_tokens_as_token_ids)",
    )
    add(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="usage.prompt_tokens_details.cached_tokens (prefix-cache hits)",
    )
    add(
        "--enable-force-include-usage",
        action="store_true",
        help="every stream carries usage, as if stream_options asked for it",
    )
    add(
        "--enable-server-load-tracking",
        action="store_true",
        help="count generation requests in flight, served at /load",
    )
    add(
        "--show-hidden-metrics-for-version",
        type=str,
        default=None,
        help="also serve the metrics hidden since that version "
        "(vllm:time_per_output_token_seconds)",
    )
    add(
        "--enable-auto-tool-choice",
        action="store_true",
        help="accepted; tool calling is not implemented yet, so requests with "
        "`tools` are refused with a 400 naming the field",
    )
    add(
        "--tool-call-parser",
        type=str,
        default=None,
        help="see --enable-auto-tool-choice",
    )
    add(
        "--disable-frontend-multiprocessing",
        action="store_true",
        help="accepted: the HTTP frontend always runs in the engine's process here",
    )
    add("--root-path", type=str, default=None, help="ASGI root_path behind a proxy")
    add(
        "--enable-chunked-prefill",
        action=_ChunkedPrefill,
        default=True,
        help="accepted: chunked prefill is always on here",
    )
    add(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="accepted, no effect on CPU: the KV cache is --kv-cache-space GiB",
    )
    add(
        "--trust-remote-code",
        action="store_true",
        help="accepted: no code is ever loaded from a model folder here",
    )
    add(
        "--enable-prompt-embeds",
        action=_Refuse,
        why="this engine takes token ids and text, not embeddings",
    )
    add(
        "--reasoning-parser",
        action=_Refuse,
        nargs=1,
        why="no reasoning parser is implemented",
    )
    add(
        "--lora-modules",
        action=_Refuse,
        nargs="+",
        why="serving LoRA adapters as models is not implemented "
        "(LoRA works offline: vllm.LLM(enable_lora=True))",
    )


def load_chat_template(value: str | None) -> str | None:
    """--chat-template: a path to a template file, or the template itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value:
        raise ValueError(
            f"--chat-template {value!r} is neither a file nor a Jinja template"
        )
    return value
