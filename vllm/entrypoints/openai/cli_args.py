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
    return EngineArgs.add_cli_args(parser)


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
