"""SIGTERM / SIGINT: the server ends in-flight requests (a stream gets an error
event then [DONE], a plain request a 503), exits with status 0, prints no
traceback and leaves no process behind."""

import http.client
import json
import signal
import threading
import time

import pytest
from server_utils import RemoteServer, alive


def _post(server: RemoteServer, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps(body),
        {"Content-Type": "application/json"},
    )
    return conn.getresponse()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(sig, tiny_model, tmp_path):
    server = RemoteServer(
        tiny_model("llama_full_vocab"),
        ["--kv-cache-space", "0.05"],
        str(tmp_path / "server.log"),
        module_entry=True,
    )
    try:
        long = {"prompt": [5, 6, 7], "max_tokens": 2000, "ignore_eos": True}
        stream = _post(server, {**long, "stream": True})
        assert stream.status == 200
        while not stream.readline().startswith(b"data: "):  # wait until it runs
            pass
        plain: dict = {}

        def wait_plain():
            resp = _post(server, long)
            plain["status"], plain["body"] = resp.status, json.loads(resp.read())

        waiter = threading.Thread(target=wait_plain)
        waiter.start()
        time.sleep(0.3)  # let it reach the engine
        children = server.descendants()
        started = time.monotonic()
        server.proc.send_signal(sig)
        events = [
            line for line in stream.read().split(b"\n") if line.startswith(b"data: ")
        ]
        waiter.join(30)
        status = server.stop(timeout=30)
        took = time.monotonic() - started
    finally:
        if server.proc.poll() is None:
            server.kill()
    log = server.output()
    assert status == 0, log[-3000:]
    assert took < 20
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2][len(b"data: ") :])["error"]
    assert "shutting down" in error["message"]
    assert plain["status"] == 503 and "error" in plain["body"]
    assert "Traceback" not in log, log[-3000:]
    assert "Shutting down" in log
    assert alive(children) == []
