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
import secrets
import signal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.exceptions import HTTPException

import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine
from vllm.engine.metrics import EngineMetrics
from vllm.entrypoints.openai.cli_args import load_chat_template, make_arg_parser
from vllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.entrypoints.openai.serving_engine import ClientDisconnected, OpenAIError
from vllm.logger import init_logger

# Named explicitly: run with -m, this module is __main__.
logger = init_logger("vllm.entrypoints.openai.api_server")

# Seconds uvicorn waits for open connections after a shutdown signal; streams
# end at once (their requests are aborted), so this only bounds a stuck client.
GRACEFUL_SHUTDOWN_S = 10


class _ApiKeyMiddleware:
    """401 for /v1/* requests without 'Authorization: Bearer <key>'."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                error = OpenAIError(
                    "Unauthorized: missing or wrong API key",
                    status=401,
                    type="authentication_error",
                    code="invalid_api_key",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _HttpMetricsMiddleware:
    """Counts HTTP responses by method, route and status code."""

    def __init__(self, app, counter: Counter, handlers: set[str]):
        self.app = app
        self.counter = counter
        self.handlers = handlers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            path = scope["path"]
            handler = path if path in self.handlers else "none"
            self.counter.labels(scope["method"], handler, str(status[0])).inc()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ()) if x != "body"]
        if error.get("type") == "json_invalid":
            return f"Invalid JSON in the request body: {error.get('msg')}", None
        param = param or (loc[0] if loc else None)
        parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg')}")
    return "; ".join(parts) or "invalid request", param


def build_app(
    engine: AsyncLLMEngine,
    metrics: EngineMetrics,
    served_model_names: list[str],
    max_model_len: int,
    api_key: str | None = None,
    chat_template: str | None = None,
    model_root: str | None = None,
) -> FastAPI:
    app = FastAPI(title="vllm", version=vllm.__version__)
    completion = OpenAIServingCompletion(engine, served_model_names, max_model_len)
    chat = OpenAIServingChat(engine, served_model_names, max_model_len, chat_template)

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return OpenAIError(message, param=param).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return OpenAIError(str(exc.detail), exc.status_code, kind).response()

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, exc: ClientDisconnected):
        return Response(status_code=499)  # nobody is listening

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
        app.add_middleware(_ApiKeyMiddleware, api_key=api_key)
    counter = Counter(
        "http_requests",
        "HTTP responses by method, route and status code.",
        ["method", "handler", "status"],
        registry=metrics.registry,
    )
    handlers = {route.path for route in app.routes}
    app.add_middleware(_HttpMetricsMiddleware, counter=counter, handlers=handlers)
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
