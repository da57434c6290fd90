"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis, valid and
invalid cases for every operation; benchmarks/fuzz_server.py): no 5xx, every
4xx an OpenAI error body, and a normal request is served afterwards. Bounded in
cases and seconds; the benchmark script runs the long version."""

import os
import sys

from server_utils import API_KEY, REPO

# Short contexts keep every generated request cheap.
SERVER_ARGS = ["--api-key", API_KEY, "--max-model-len", "64"]


def test_fuzz_api_from_its_schema(server):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        from fuzz_server import fuzz
    finally:
        sys.path.pop(0)
    report = fuzz(server.base_url, max_examples=25, seconds=40, api_key=API_KEY)
    print(report.summary())
    assert report.findings == [], "\n".join(report.findings)
    assert report.cases >= 50 and report.served_after
    # Both kinds of answer occur: the fuzzer reaches generation, not only 400s.
    assert report.statuses[200] > 0 and report.statuses[400] > 0
