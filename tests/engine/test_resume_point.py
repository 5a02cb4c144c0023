"""Ring 2: a prompt resumed at step.resume_point from canonical KV computes every row, and the next
decode step, bit-identically to its canonical run, on both models; resuming exactly where the shared
prefix ends does not (the control that shows the comparison can fail)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from app.engine.llama import LlamaModel
from app.engine.step import resume_point

pytestmark = [pytest.mark.engine, pytest.mark.slow]

C = 128
# (prompt length, cached length): last chunks of 1, 5, 8, 44, 64, 65 and 128 rows; prefixes ending
# just before and after 64 rows into a chunk, and near a chunk's end.
CASES = [(257, 256), (261, 259), (392, 390), (300, 299), (320, 318), (449, 447), (384, 327), (330, 262),
         (200, 61)]


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def model(request, engine_settings, second_model_path):
    path = engine_settings.model_path if request.param == "smollm2" else second_model_path
    m = LlamaModel(dataclasses.replace(engine_settings, model_path=path), n_slots=2)
    yield m
    m.close()


def _compute(m: LlamaModel, slot: int, prompt: list[int], start: int) -> np.ndarray:
    """prompt[start:] into `slot` as the scheduler does (to the next chunk boundary, then whole
    chunks); returns the logits of every computed row, then of one decode step after the prompt."""
    out, p, n = [], start, len(prompt)
    while p < n:
        e = min((p // C + 1) * C, n)
        out.append(m.decode(np.array(prompt[p:e], np.int32), np.arange(p, e, dtype=np.int32),
                            np.full(e - p, slot, np.int32), np.ones(e - p, bool)).copy())
        p = e
    nxt = m.decode(np.array([int(np.argmax(out[-1][-1]))], np.int32), np.array([n], np.int32),
                   np.array([slot], np.int32), np.ones(1, bool)).copy()
    return np.concatenate(out + [nxt])


def _resumed(m: LlamaModel, prompt: list[int], start: int) -> np.ndarray:
    """Slot 0 holds the prompt's canonical KV: resume from its first `start` cells in slot 1."""
    m.seq_rm(1)
    m.copy_stream(0, 1)
    m.seq_rm(1, start, -1)
    return _compute(m, 1, prompt, start)


def test_resuming_at_the_resume_point_is_bit_identical(model):
    toks = model.tokenize(" ".join(f"Sentence {i} says something about item {i * 7 % 13}." for i in range(120)),
                          add_special=True, parse_special=False)
    rnd = random.Random(0)
    naive_differs = 0
    for n, cached in CASES:
        off = rnd.randrange(0, len(toks) - n)
        prompt = toks[off:off + n]
        model.seq_rm(0)
        canonical = _compute(model, 0, prompt, 0)
        model.seq_rm(0, n, -1)  # drop the decode step's cell: slot 0 holds the prompt's KV only
        start = resume_point(cached, n, C)
        assert np.array_equal(_resumed(model, prompt, start), canonical[start:]), (n, cached, start)
        naive_differs += not np.array_equal(_resumed(model, prompt, cached), canonical[cached:])
    assert naive_differs >= len(CASES) // 3  # resuming anywhere would not be bit-exact
