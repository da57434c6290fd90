"""A live OpenAI-compatible server in a subprocess on 127.0.0.1, and helpers to
read its /metrics and check what it leaves behind."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
API_KEY = "test-key"


def free_port() -> int:
    """A free port below the kernel's ephemeral range and above Ray's worker
    ports (10002-19999). A port the kernel hands out (bind to 0) can be handed
    out again while the server starts, and Ray's gRPC servers bind with
    SO_REUSEPORT: then the kernel splits our HTTP connections between the two
    sockets, and a request gets an HTTP/2 frame back (seen once in CI)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, ephemeral_low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


class RemoteServer:
    """``vllm serve`` (or ``python -m vllm.entrypoints.openai.api_server``) as a
    child process, output in a log file; ready once /health answers 200."""

    def __init__(
        self,
        model: str,
        args: list[str],
        log_path: str,
        env: dict[str, str] | None = None,
        module_entry: bool = False,
        timeout: float = 240.0,
    ):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        if module_entry:
            cmd = ["-m", "vllm.entrypoints.openai.api_server", "--model", model]
        else:
            cmd = ["-m", "vllm.entrypoints.cli", "serve", model]
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        path = full_env.get("PYTHONPATH")
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, path) if p)
        full_env.pop("RAY_ADDRESS", None)
        full_env.update(env or {})
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, *cmd, "--host", self.host, "--port", str(self.port)]
            + args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.kill()
        raise TimeoutError(f"server not ready:\n{self.output()[-4000:]}")

    def url(self, path: str) -> str:
        return self.base_url + path

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, api_key: str = API_KEY, **kwargs):
        import openai

        return openai.OpenAI(
            base_url=self.url("/v1"), api_key=api_key, max_retries=0, **kwargs
        )

    def async_client(self, api_key: str = API_KEY, **kwargs):
        import openai

        return openai.AsyncOpenAI(
            base_url=self.url("/v1"), api_key=api_key, max_retries=0, **kwargs
        )

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends ``sig`` and waits for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        for child in self.descendants():
            child.kill()
        self.proc.kill()
        self.proc.wait()


def scrape(server: RemoteServer) -> dict[str, float]:
    """/metrics samples as {'name{label="v",...}': value}, labels sorted and
    model_name left out."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(
                f'{k}="{v}"'
                for k, v in sorted(s.labels.items())
                if k not in ("model_name", "engine")
            )
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as gone)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left
