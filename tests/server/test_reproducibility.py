"""Ring 3: the reproducibility suite over HTTP against a fresh gunicorn server in the default
configuration, compared byte for byte; and the zero-token prompt's clear answer."""
from __future__ import annotations

import pytest
import requests

from tests import repro_suite
from tests.server.conftest import start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, model_path):
    s = start_server(tmp_path_factory, model_path, N_PARALLEL="8")
    yield s
    s.stop()


def test_every_response_is_byte_identical_serial_concurrent_shuffled(fresh_server):
    url = fresh_server.url + "/process"

    def send(body: dict) -> dict:
        r = requests.post(url, json=body, timeout=300)
        assert r.status_code == 200, r.text
        answer = r.json()
        answer.pop("request_time")  # wall time: the one field that may differ
        answer.pop("cached_tokens")  # how much was reused: differs by design, the numbers may not
        return answer

    serial, concurrent, shuffled = repro_suite.run_three_ways(send)
    assert not repro_suite.differences(serial, concurrent)
    assert not repro_suite.differences(serial, shuffled)
    health = requests.get(fresh_server.url + "/health", timeout=10).json()
    assert health["running"] == 0 and health["kv_slots_in_use"] == 0


@pytest.mark.parametrize("body", [
    {"prompt": "\u0016", "max_new_tokens": 5},
    {"prompt": "\u0016", "echo_prompt": True, "max_new_tokens": 0, "num_samples": 8, "temperature": 1},
    {"prompt": "\u0016", "echo_prompt": True, "max_new_tokens": 0, "num_samples": 1, "temperature": 1},
])
def test_a_zero_token_prompt_gets_a_clear_422_and_wedges_nothing(server, body):
    r = requests.post(server.url + "/process", json=body, timeout=10)  # a hang guard, not a timing check
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "prompt"] and "no tokens" in detail["msg"]
    ok = requests.post(server.url + "/process", json={"prompt": "Hello", "max_new_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and requests.get(server.url + "/health", timeout=10).json()["running"] == 0
