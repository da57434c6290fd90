"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of an
``AsyncLLMEngine``:

    python -m vllm.entrypoints.openai.api_server --model MODEL [flags]
    vllm serve MODEL [flags]

SIGTERM or SIGINT: the server stops accepting connections, ends the requests in
flight (streams get an error event, others a 503), then the engine and its
workers stop and the process exits with status 0.
"""

import argparse
import asyncio
import signal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine
from vllm.engine.metrics import EngineMetrics
from vllm.entrypoints.openai.cli_args import (
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    load_chat_template,
    make_arg_parser,
)
from vllm.entrypoints.openai.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HttpMetricsMiddleware,
    install_error_handlers,
)
from vllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.entrypoints.openai.serving_engine import OpenAIError
from vllm.entrypoints.openai.tokenizer_pool import TokenizerPool
from vllm.logger import init_logger

# Named explicitly: run with -m, this module is __main__.
logger = init_logger("vllm.entrypoints.openai.api_server")

# Seconds uvicorn waits for open connections after a shutdown signal; streams
# end at once (their requests are aborted), so this only bounds a stuck client.
GRACEFUL_SHUTDOWN_S = 10


def build_app(
    engine: AsyncLLMEngine,
    metrics: EngineMetrics,
    served_model_names: list[str],
    max_model_len: int,
    api_key: str | None = None,
    chat_template: str | None = None,
    model_root: str | None = None,
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="vllm", version=vllm.__version__)
    pool = TokenizerPool(engine.get_tokenizer())
    completion = OpenAIServingCompletion(
        engine, served_model_names, max_model_len, pool
    )
    chat = OpenAIServingChat(
        engine, served_model_names, max_model_len, pool, chat_template
    )

    install_error_handlers(app, max_request_body_bytes)

    @app.get("/health")
    async def health() -> Response:
        try:
            engine.check_health()
        except Exception as exc:
            return OpenAIError(str(exc), 503, "service_unavailable").response()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": vllm.__version__})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [
            ModelCard(id=name, root=model_root, max_model_len=max_model_len)
            for name in served_model_names
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(
            generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request) -> Response:
        return await completion.create(request, raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, raw: Request):
        return await chat.create(request, raw)

    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, limit=max_request_body_bytes)
    counter = Counter(
        "http_requests",
        "HTTP responses by method, route and status code.",
        ["method", "handler", "status"],
        registry=metrics.registry,
    )
    handlers = {route.path for route in app.routes}
    app.add_middleware(HttpMetricsMiddleware, counter=counter, handlers=handlers)
    return app


class _Server(uvicorn.Server):
    """uvicorn.Server that also ends in-flight requests when a shutdown signal
    arrives, so open streams do not hold the shutdown up."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLMEngine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self.engine.begin_shutdown()


def _ignore_signal(signum, frame) -> None:
    # uvicorn re-raises the signal that stopped it once it has stopped; the
    # shutdown is already under way by then.
    pass


def run_server(args: argparse.Namespace) -> None:
    engine_args = EngineArgs.from_cli_args(args)
    names = args.served_model_name or [args.model]
    chat_template = load_chat_template(args.chat_template)
    metrics = EngineMetrics(names[0])
    engine = AsyncLLMEngine.from_engine_args(engine_args, metrics)
    try:
        app = build_app(
            engine,
            metrics,
            names,
            engine.model_config.max_model_len,
            api_key=args.api_key,
            chat_template=chat_template,
            model_root=args.model,
            max_request_body_bytes=args.max_request_body_bytes,
        )
        config = uvicorn.Config(
            app,
            host=args.host or "0.0.0.0",
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            lifespan="off",
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _ignore_signal)
        logger.info("Serving %s on port %d", ", ".join(names), args.port)
        asyncio.run(_Server(config, engine).serve())
    finally:
        engine.shutdown()
    logger.info("Server stopped")


def main() -> None:
    parser = make_arg_parser(
        argparse.ArgumentParser(description="OpenAI-compatible vLLM server")
    )
    run_server(parser.parse_args())


if __name__ == "__main__":
    main()
