"""The ``vllm`` console script (installed by ``pip install -e .``):

vllm serve [MODEL] [server and engine flags]
"""

import argparse
import sys

from vllm.entrypoints.openai.cli_args import make_arg_parser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM command line")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="start the OpenAI-compatible server",
        description="Start the OpenAI-compatible server.",
    )
    serve.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        help="model to serve (same as --model; the bundled SmolLM2 if neither)",
    )
    make_arg_parser(serve)
    args = parser.parse_args(argv)
    if args.model_tag is not None:
        args.model = args.model_tag
    from vllm.entrypoints.openai.api_server import run_server

    try:
        run_server(args)
    except KeyboardInterrupt:  # interrupted while loading, before serving
        sys.exit(130)


if __name__ == "__main__":
    main()
