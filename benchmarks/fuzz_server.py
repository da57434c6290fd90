"""Fuzzes a running OpenAI-compatible server from its own OpenAPI schema
(schemathesis: valid and invalid requests for every operation), then checks it
still serves a normal request.

    vllm serve --max-model-len 64 &
    python benchmarks/fuzz_server.py --max-examples 300 --seconds 600

A finding is a 5xx, a 4xx whose body is not an OpenAI error
(``{"error": {"message", "type", "param", "code"}}``), or a request that does
not answer within --request-timeout. Prints each operation's count of cases
and statuses, every finding (with a curl line to replay it) and a summary.
The suite runs a bounded version (tests/entrypoints/openai/test_fuzz.py). A
short --max-model-len keeps each generated request cheap.
"""

import argparse
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field

import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    findings: list[str] = field(default_factory=list)
    served_after: bool = False

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.cases} cases ({statuses}); {len(self.findings)} findings; "
            f"normal request afterwards: {'ok' if self.served_after else 'FAILED'}"
        )


def problem(status: int, body: bytes) -> str | None:
    """What is wrong with a response, if anything."""
    if status >= 500:
        return f"server error {status}"
    if 400 <= status < 500:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without an OpenAI error body"
        if not isinstance(error, dict) or not set(error) >= ERROR_KEYS:
            return f"{status} error body lacks {sorted(ERROR_KEYS)}"
    return None


def fuzz_operation(operation, mode, report, base_url, headers, args, deadline, model):
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=args.max_examples,
        deadline=None,
        database=None,
        derandomize=args.seed is None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: one report each
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        if time.monotonic() > deadline:
            return
        # A random model name is refused at once: valid cases name the served
        # model so that they reach the sampling fields.
        named = isinstance(case.body, dict) and "model" in case.body
        if named and mode == mode.POSITIVE:
            case.body["model"] = model
        try:
            resp = case.call(
                base_url=base_url, headers=headers, timeout=args.request_timeout
            )
        except requests.Timeout:
            report.findings.append(f"timeout: {case.as_curl_command()}")
            return
        report.cases += 1
        report.statuses[resp.status_code] += 1
        found = problem(resp.status_code, resp.content)
        if found:
            report.findings.append(
                f"{found}: {resp.content[:300]!r}\n    {case.as_curl_command()}"
            )

    # Unsatisfiable: nothing to make invalid (an operation without parameters).
    with contextlib.suppress(Unsatisfiable):
        run()


def normal_request(base_url: str, headers: dict) -> bool:
    resp = requests.post(
        base_url + "/v1/completions",
        json={"prompt": "Hello", "max_tokens": 4, "temperature": 0},
        headers=headers,
        timeout=60,
    )
    return resp.status_code == 200 and len(resp.json()["choices"]) == 1


def fuzz(
    base_url: str,
    max_examples: int = 30,
    seconds: float = 60.0,
    api_key: str | None = None,
    request_timeout: float = 30.0,
    seed: int | None = None,
    verbose: bool = False,
) -> FuzzReport:
    import schemathesis

    args = argparse.Namespace(
        max_examples=max_examples, request_timeout=request_timeout, seed=seed
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    models = requests.get(base_url + "/v1/models", headers=headers, timeout=30)
    model = models.json()["data"][0]["id"]
    report = FuzzReport()
    deadline = time.monotonic() + seconds
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            before = report.cases
            fuzz_operation(
                operation, mode, report, base_url, headers, args, deadline, model
            )
            if verbose:
                print(f"{operation.label} [{mode.value}]: {report.cases - before}")
    report.served_after = normal_request(base_url, headers)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--max-examples", type=int, default=300, help="per operation and mode"
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="whole run")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: fixed")
    args = parser.parse_args()
    start = time.monotonic()
    report = fuzz(
        args.base_url.rstrip("/"),
        args.max_examples,
        args.seconds,
        args.api_key,
        args.request_timeout,
        args.seed,
        verbose=True,
    )
    for finding in report.findings:
        print(finding)
    print(f"{report.summary()} in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
