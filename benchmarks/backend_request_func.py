"""One streamed request to an OpenAI-compatible server, timed chunk by chunk
(for benchmark_serving.py)."""

import json
import os
import time
from dataclasses import dataclass, field

import aiohttp

# Long enough for any CPU run; a stuck request still ends the benchmark.
TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)


@dataclass
class RequestFuncInput:
    prompt: list[int] | str  # token ids (completions) or text (chat)
    api_url: str
    prompt_len: int
    output_len: int
    model: str
    ignore_eos: bool = False
    temperature: float | None = 0.0


@dataclass
class RequestFuncOutput:
    success: bool = False
    generated_text: str = ""
    prompt_len: int = 0
    output_tokens: int = 0  # from the server's usage report
    ttft: float = 0.0  # seconds to the first token
    itl: list[float] = field(default_factory=list)  # gaps between later chunks
    latency: float = 0.0  # seconds to the last token
    error: str = ""


def auth_headers() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _payload(req: RequestFuncInput, chat: bool) -> dict:
    body = {
        "model": req.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": req.ignore_eos,
    }
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if chat:
        body["messages"] = [{"role": "user", "content": req.prompt}]
        body["max_completion_tokens"] = req.output_len
    else:
        body["prompt"] = req.prompt
        body["max_tokens"] = req.output_len
    return body


def _chunk_text(data: dict, chat: bool) -> str | None:
    """The text a chunk adds, or None when it carries no token (usage, or the
    chat role announcement)."""
    choices = data.get("choices") or []
    if not choices:
        return None
    if not chat:
        return choices[0].get("text") or ""
    delta = choices[0].get("delta") or {}
    if delta.get("role") is not None:
        return None
    return delta.get("content") or ""


async def request_openai(
    req: RequestFuncInput, session: aiohttp.ClientSession, chat: bool
) -> RequestFuncOutput:
    out = RequestFuncOutput(prompt_len=req.prompt_len)
    start = last = time.perf_counter()
    try:
        async with session.post(
            req.api_url, json=_payload(req, chat), headers=auth_headers()
        ) as response:
            if response.status != 200:
                out.error = f"HTTP {response.status}: {await response.text()}"
                return out
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[len(b"data:") :].strip()
                if payload == b"[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    out.error = data["error"].get("message", str(data["error"]))
                    return out
                if data.get("usage"):
                    out.output_tokens = data["usage"]["completion_tokens"]
                text = _chunk_text(data, chat)
                if text is None:
                    continue
                now = time.perf_counter()
                if out.ttft == 0.0:
                    out.ttft = now - start
                else:
                    out.itl.append(now - last)
                last = now
                out.generated_text += text
        out.latency = last - start
        out.success = out.ttft > 0.0
        if not out.success:
            out.error = "the stream carried no token"
    except Exception as exc:  # a failed request is counted, not fatal
        out.error = f"{type(exc).__name__}: {exc}"
    return out


BACKENDS = {
    # name: (default endpoint, chat API?)
    "vllm": ("/v1/completions", False),
    "openai": ("/v1/completions", False),
    "openai-chat": ("/v1/chat/completions", True),
}
