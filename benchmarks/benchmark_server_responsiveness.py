"""How long a small request waits while huge request bodies are in flight, on a
running OpenAI-compatible server.

    vllm serve &
    python benchmarks/benchmark_server_responsiveness.py --body-mb 8

Each trial posts one body of --body-mb MB (a text prompt, token ids or a chat
message) and, --delay-ms later while it is on its way, a small request (2
tokens), and times both. Prints the big bodies' status and time and the small
requests' median and maximum latency, after the small request's latency on
the idle server. With the
default --max-request-body-bytes (8 MiB) an 8 MB body is parsed and refused for
its length; a larger one gets 413 unread.
"""

import argparse
import json
import statistics
import threading
import time

import requests

FORMS = ("text", "ids", "chat")


def big_body(form: str, size: int, model: str) -> bytes:
    if form == "text":
        return json.dumps({"model": model, "prompt": "hello " * (size // 6)}).encode()
    if form == "ids":
        return json.dumps({"model": model, "prompt": [42] * (size // 4)}).encode()
    message = {"role": "user", "content": "hello " * (size // 6)}
    return json.dumps({"model": model, "messages": [message]}).encode()


def post(url: str, body: bytes, timeout: float = 600) -> tuple[int, float]:
    start = time.perf_counter()
    resp = requests.post(
        url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout
    )
    return resp.status_code, time.perf_counter() - start


def idle_latencies(base: str, model: str, count: int) -> list[float]:
    body = json.dumps(
        {"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    ).encode()
    out = []
    for _ in range(count):
        status, seconds = post(base + "/v1/completions", body)
        assert status == 200, status
        out.append(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--body-mb", type=float, default=8.0)
    parser.add_argument("--trials", type=int, default=10, help="per form")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=5.0,
        help="how long after a big body starts the small request is sent",
    )
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    model = requests.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
    idle = idle_latencies(base, model, 20)
    print(
        f"idle server: small request median {statistics.median(idle) * 1e3:.1f} ms,"
        f" max {max(idle) * 1e3:.1f} ms"
    )
    size = int(args.body_mb * 1e6)
    small = json.dumps(
        {"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    ).encode()
    for form in args.forms:
        body = big_body(form, size, model)
        path = "/v1/chat/completions" if form == "chat" else "/v1/completions"
        big, latencies = [], []
        for _ in range(args.trials):
            sender = threading.Thread(
                target=lambda: big.append(post(base + path, body))  # noqa: B023
            )
            sender.start()
            time.sleep(args.delay_ms / 1e3)  # the big body is on its way
            status, seconds = post(base + "/v1/completions", small)
            assert status == 200, status
            latencies.append(seconds)
            sender.join()
        big_s = statistics.median(t for _, t in big)
        print(
            f"{form:>4}: {len(body) / 1e6:.1f} MB body: status "
            f"{sorted({s for s, _ in big})}, median {big_s:.2f} s;"
            f" small request meanwhile: median {statistics.median(latencies) * 1e3:.0f}"
            f" ms, max {max(latencies) * 1e3:.0f} ms ({len(latencies)} trials)"
        )


if __name__ == "__main__":
    main()
