"""The server's ASGI middleware (API key, body size limit, HTTP metrics) and
the handlers that turn every error into an OpenAI error body."""

import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import Counter
from starlette.exceptions import HTTPException

from vllm.entrypoints.openai.serving_engine import ClientDisconnected, OpenAIError
from vllm.logger import init_logger

logger = init_logger(__name__)


class ApiKeyMiddleware:
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


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        f"Request body too large: the limit is {limit} bytes "
        "(--max-request-body-bytes)",
        status=413,
    )


class _BodyTooLarge(HTTPException):
    def __init__(self):
        super().__init__(413, "request body too large")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes, before anything parses it: at once
    from a Content-Length, else as soon as the bytes read pass the limit (the
    exception raised from ``receive`` reaches the HTTPException handler).
    (FastAPI's own ``max_body_size`` answers in plain text, not an OpenAI
    error body.)"""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit).response()(scope, receive, send)
            return
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        await self.app(scope, counted_receive, send)


class HttpMetricsMiddleware:
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


def install_error_handlers(app: FastAPI, max_request_body_bytes: int) -> None:
    """Every error the app raises becomes an OpenAI error body."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return OpenAIError(message, param=param).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        if exc.status_code == 413:
            return _too_large(max_request_body_bytes).response()
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return OpenAIError(str(exc.detail), exc.status_code, kind).response()

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, exc: ClientDisconnected):
        return Response(status_code=499)  # nobody is listening

    @app.exception_handler(Exception)
    async def server_bug(_: Request, exc: Exception):
        # A bug (the fuzzer's finding), still answered as an OpenAI error.
        logger.exception("internal error", exc_info=exc)
        return OpenAIError(
            f"internal server error: {type(exc).__name__}", 500, "internal_server_error"
        ).response()
