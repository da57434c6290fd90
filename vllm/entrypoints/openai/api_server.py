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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import ValidationError
from starlette.background import BackgroundTask

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
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.entrypoints.openai.serving_engine import OpenAIError, ServingOptions
from vllm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
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
    model_root: str | None = None,
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
    options: ServingOptions | None = None,
    load_tracking: bool = False,
) -> FastAPI:
    """The app; ``options`` carries the flags the endpoints read."""
    app = FastAPI(title="vllm", version=vllm.__version__)
    pool = TokenizerPool(engine.get_tokenizer())
    args = (engine, served_model_names, max_model_len, pool, options)
    completion = OpenAIServingCompletion(*args)
    chat = OpenAIServingChat(*args)
    tokenization = OpenAIServingTokenization(*args)
    load = LoadCounter(load_tracking)

    install_error_handlers(app, max_request_body_bytes)

    @app.get("/health")
    async def health() -> Response:
        try:
            engine.check_health()
        except Exception as exc:
            return OpenAIError(str(exc), 503, "service_unavailable").response()
        return Response(status_code=200)

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        """SageMaker's health check: /health by another name."""
        return await health()

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": vllm.__version__})

    @app.get("/load")
    async def server_load() -> JSONResponse:
        """Requests in flight (counted with --enable-server-load-tracking)."""
        return JSONResponse({"server_load": load.value})

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

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> TokenizeResponse:
        return await tokenization.tokenize(request)

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> DetokenizeResponse:
        return await tokenization.detokenize(request)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request) -> Response:
        return await load.track(completion.create(request, raw))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, raw: Request):
        return await load.track(chat.create(request, raw))

    @app.post("/v1/chat/completions/batch")
    async def chat_completions_batch(request: BatchChatCompletionRequest, raw: Request):
        return await load.track(chat.create_batch(request, raw))

    @app.post("/invocations")
    async def invocations(raw: Request) -> Response:
        """SageMaker's one route: a chat body (with "messages") or a completion
        body (with "prompt")."""
        try:
            body = await raw.json()
        except ValueError as exc:
            raise OpenAIError("Invalid JSON in the request body", param=None) from exc
        if isinstance(body, dict) and "messages" in body:
            request = _validated(ChatCompletionRequest, body)
            return await load.track(chat.create(request, raw))
        if isinstance(body, dict) and "prompt" in body:
            request = _validated(CompletionRequest, body)
            return await load.track(completion.create(request, raw))
        raise OpenAIError(
            "/invocations takes a chat completion (with `messages`) or a "
            "completion (with `prompt`) request",
            param="messages",
        )

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


def _validated(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


class LoadCounter:
    """Generation requests in flight, a streaming one until its stream ends
    (vLLM's --enable-server-load-tracking)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.value = 0

    async def track(self, work) -> Response:
        if not self.enabled:
            return await work
        self.value += 1
        try:
            response = await work
        except BaseException:
            self.value -= 1
            raise
        if isinstance(response, StreamingResponse):
            response.background = BackgroundTask(self._done)
        else:
            self.value -= 1
        return response

    def _done(self) -> None:
        self.value -= 1


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
    shown = args.show_hidden_metrics_for_version
    metrics = EngineMetrics(names[0], show_hidden=shown is not None)
    engine = AsyncLLMEngine.from_engine_args(engine_args, metrics)
    cache = engine.vllm_config.cache_config
    metrics.set_cache_config(
        {
            "block_size": str(cache.block_size),
            "cache_dtype": str(engine.model_config.dtype).replace("torch.", ""),
            "enable_prefix_caching": str(cache.enable_prefix_caching),
            "num_gpu_blocks": str(engine.engine.num_kv_blocks),
            "kv_cache_space_gib": str(cache.kv_cache_space_gib),
        }
    )
    try:
        app = build_app(
            engine,
            metrics,
            names,
            engine.model_config.max_model_len,
            api_key=args.api_key,
            model_root=args.model,
            max_request_body_bytes=args.max_request_body_bytes,
            options=ServingOptions(
                return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                enable_prompt_tokens_details=args.enable_prompt_tokens_details,
                enable_force_include_usage=args.enable_force_include_usage,
                chat_template=chat_template,
                tool_choice_auto=args.enable_auto_tool_choice,
            ),
            load_tracking=args.enable_server_load_tracking,
        )
        config = uvicorn.Config(
            app,
            host=args.host or "0.0.0.0",
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            lifespan="off",
            root_path=args.root_path or "",
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
