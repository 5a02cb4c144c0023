"""Ring 2: one request, one answer: bit-identical whatever ran before it or beside it, in the
default (batched, prefix-reusing) mode, on SmolLM2 and on a second model with BOS, a 262k vocabulary
and sliding-window attention (Gemma 3 270M)."""
from __future__ import annotations

import dataclasses

import pytest

from app import schemas
from app.api import _completion, _to_generation
from app.engine import Engine
from tests import repro_suite

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def sender(engine: Engine):
    def send(body: dict) -> dict:
        req = _to_generation(schemas.ProcessRequest.model_validate(body), engine.settings)
        r = engine.generate(req)
        return {"completions": [_completion(c) for c in r.completions], "prompt_tokens": r.n_prompt_tokens}
    return send


@pytest.fixture(params=["smollm2", "gemma"])
def fresh_engine(request, engine_settings, second_model_path):
    path = engine_settings.model_path if request.param == "smollm2" else second_model_path
    eng = Engine(dataclasses.replace(engine_settings, model_path=path, n_parallel=8)).start(background=False)
    yield eng
    eng.close()


def test_same_request_same_bits_serial_concurrent_shuffled(fresh_engine):
    serial, concurrent, shuffled = repro_suite.run_three_ways(sender(fresh_engine))
    stats = fresh_engine.stats()
    assert stats["prefix_cache_hits_total"] > 0  # prefixes were reused in the batched runs
    assert not repro_suite.differences(serial, concurrent), repro_suite.differences(serial, concurrent)
    assert not repro_suite.differences(serial, shuffled), repro_suite.differences(serial, shuffled)
    assert any(len(c["tokens"]) > 5 for r in serial for c in r["completions"])  # it generated text


def test_reuse_on_and_off_give_the_same_bits(fresh_engine):
    """Served one at a time, the suite's prompts reuse each other's prefixes mid-chunk (from
    step.resume_point); without reuse every prompt is computed whole. The bits must not differ."""
    off = Engine(dataclasses.replace(fresh_engine.settings, prefix_reuse=False)).start(background=False)
    try:
        suite = repro_suite.requests()
        on_answers = [sender(fresh_engine)(r) for r in suite]
        off_answers = [sender(off)(r) for r in suite]
    finally:
        off.close()
    assert fresh_engine.stats()["prefix_cache_hits_total"] > 0
    assert not repro_suite.differences(off_answers, on_answers)
