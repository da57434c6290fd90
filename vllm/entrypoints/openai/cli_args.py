"""Flags of the OpenAI-compatible server: its own, then every engine flag."""

import argparse
import os

from vllm.engine.arg_utils import EngineArgs

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
