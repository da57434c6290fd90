"""One huge request body never stalls the others: bodies over
--max-request-body-bytes get 413 before they are parsed, a text too long for
max_model_len is refused from its length without tokenizing it, and tokenizing
runs off the event loop."""

import http.client
import json
import threading
import time

from server_utils import API_KEY

LIMIT = 4 * 1024 * 1024
SERVER_ARGS = ["--api-key", API_KEY, "--max-request-body-bytes", str(LIMIT)]
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


def post(server, path: str, body, headers=HEADERS) -> tuple[int, dict, float]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    start = time.perf_counter()
    conn.request("POST", path, body, headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data), time.perf_counter() - start


def small(server) -> tuple[int, dict, float]:
    body = json.dumps({"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    return post(server, "/v1/completions", body)


def assert_openai_error(body: dict, status: int) -> str:
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return body["error"]["message"]


def test_body_over_the_limit_gets_413_unread(server):
    body = json.dumps({"prompt": "x" * (LIMIT + 10)})
    status, reply, _ = post(server, "/v1/completions", body)
    assert status == 413
    assert str(LIMIT) in assert_openai_error(reply, 413)

    assert small(server)[0] == 200


def test_small_request_answers_while_a_huge_prompt_is_refused(server):
    assert small(server)[0] == 200  # warm
    bodies = {
        "/v1/completions": json.dumps({"prompt": "hello " * 600_000}),  # 3.6 MB
        "/v1/chat/completions": json.dumps(
            {"messages": [{"role": "user", "content": "hello " * 600_000}]}
        ),
    }
    for path, body in bodies.items():
        big: list = []
        sender = threading.Thread(target=lambda: big.append(post(server, path, body)))  # noqa: B023
        sender.start()
        time.sleep(0.005)
        status, _, seconds = small(server)
        sender.join()
        assert status == 200
        # Tokenizing 3.6 MB takes seconds here; refused from its length it
        # takes milliseconds, and the small request does not wait for it.
        ((big_status, reply, big_seconds),) = big
        assert big_status == 400
        message = assert_openai_error(reply, 400)
        assert "at least" in message and "maximum context length" in message
        assert big_seconds < 1.0 and seconds < 1.0, (big_seconds, seconds)


def test_long_prompt_under_the_bound_is_tokenized_off_the_loop(server):
    # 160k characters: under the bound (2047 tokens x 81 characters), so it is
    # tokenized (in a pool thread) and refused for its real length.
    body = json.dumps({"prompt": "hello " * 26_000})
    big: list = []
    sender = threading.Thread(
        target=lambda: big.append(post(server, "/v1/completions", body))
    )
    sender.start()
    time.sleep(0.005)
    status, _, seconds = small(server)
    sender.join()
    assert status == 200 and seconds < 1.0
    ((big_status, reply, _),) = big
    assert big_status == 400
    assert "26001 in the prompt" in assert_openai_error(reply, 400)


def test_chunked_body_stopped_once_past_the_limit():
    """No Content-Length: the middleware counts the bytes as the app reads them
    and stops at the limit (in process: over a socket the server's early answer
    races the client's upload)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from pydantic import BaseModel

    from vllm.entrypoints.openai.middleware import (
        BodyLimitMiddleware,
        install_error_handlers,
    )

    class Body(BaseModel):
        prompt: str

    app = FastAPI()
    install_error_handlers(app, 1000)
    app.add_middleware(BodyLimitMiddleware, limit=1000)
    reads = []

    @app.post("/echo")
    async def echo(body: Body) -> dict:
        reads.append(len(body.prompt))
        return {"length": len(body.prompt)}

    def chunks(n: int):
        yield b'{"prompt": "'
        for _ in range(n):
            yield b"x" * 100
        yield b'"}'

    client = TestClient(app)
    resp = client.post("/echo", content=chunks(20), headers=HEADERS)
    assert resp.status_code == 413 and "1000 bytes" in resp.json()["error"]["message"]
    assert reads == []
    resp = client.post("/echo", content=chunks(9), headers=HEADERS)
    assert resp.status_code == 200 and resp.json() == {"length": 900}
