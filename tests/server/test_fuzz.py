"""Ring 3: schemathesis fuzzes every operation of the served openapi.json on a real server (nginx +
gunicorn, as deployed). Fails on any 5xx, any hang (a request past --request-timeout), any status,
content type, header or body outside what the document declares, any invalid input accepted, and
any undeclared method answered without 405 + Allow.

Not checked: positive_data_acceptance. Some schema-valid requests are refused for reasons a JSON
Schema cannot state: a prompt plus max_new_tokens beyond the context window (400), token ids past
the vocabulary (422). Those answers are declared, and the checks above hold them to it.

N_CTX=64 keeps the largest generation the fuzzer can ask for short (64 tokens x 8 samples), so
the run takes about two minutes on two cores; FUZZ_EXAMPLES and FUZZ_SEED change it. One
schemathesis worker: with two threads, hypothesis' ast.parse of strategy lambdas hits CPython 3.11's
thread-unsafe recursion counter ("AST constructor recursion depth mismatch") now and then.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.fuzz]

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance")


def test_schemathesis_finds_nothing(tmp_path_factory, model_path, tmp_path):
    server = start_server(tmp_path_factory, model_path, N_THREADS="1", N_CTX="64", REQUEST_TIMEOUT="30")
    st = Path(sys.executable).with_name("st")
    argv = [str(st), "run", f"{server.url}/openapi.json", "--checks", CHECKS,
            "--max-examples", os.environ.get("FUZZ_EXAMPLES", "40"), "--request-timeout", "45", "--workers", "1",
            "--report", "junit", "--report-dir", str(tmp_path)]
    if os.environ.get("FUZZ_SEED"):
        argv += ["--seed", os.environ["FUZZ_SEED"]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "NO_COLOR": "1"})
    finally:
        server.stop()
    summary = done.stdout[done.stdout.find("SUMMARY"):] if "SUMMARY" in done.stdout else done.stdout[-3000:]
    print("\n" + summary)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    cases = re.search(r"(\d+) generated", done.stdout)
    assert cases and int(cases.group(1)) >= 100, "too few cases to mean anything"
    log = server.log_path.read_text()
    for route in ("POST /process", "POST /tokenize", "POST /decode", "GET /health", "GET /metrics"):
        assert f"app.access: {route} " in log, f"the fuzz never reached {route}"
