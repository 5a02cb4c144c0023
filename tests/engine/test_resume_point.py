"""Ring 2: the numbers of a row depend on its batch only through the batch's kernel class, so a
prompt resumed at step.resume_point from canonical KV computes every row, and the next decode step,
bit-identically to its fresh run, on both models, in the engine's batches and in random batches of
64..128 rows. Resuming exactly where the shared prefix ends, a short batch included, does not (the
control that shows the comparison can fail)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from app.engine.jobs import Job
from app.engine.llama import LlamaModel
from app.engine.step import next_chunk, resume_point
from app.engine.types import GenerationRequest

pytestmark = [pytest.mark.engine, pytest.mark.slow]

C = 128
# (prompt length, cached length): resumed batches of 1, 2, 3, 5, 8, 44, 57 and 63 rows when resumed
# exactly at the prefix's end; prefixes ending mid-batch, at a batch's end, and far from the end.
CASES = [(257, 256), (261, 259), (392, 390), (300, 299), (320, 318), (449, 447), (384, 327), (330, 262),
         (200, 61), (450, 200), (260, 128), (190, 127)]


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def model(request, engine_settings, second_model_path):
    path = engine_settings.model_path if request.param == "smollm2" else second_model_path
    m = LlamaModel(dataclasses.replace(engine_settings, model_path=path), n_slots=2)
    yield m
    m.close()


def _batches(prompt: list[int], start: int, rnd: random.Random | None) -> list[tuple[int, int]]:
    """The engine's batches from `start` (step.next_chunk), or random ones of 64..128 rows on row
    groups of 4 when rnd is given."""
    job = Job(req=GenerationRequest(prompt="x", max_new_tokens=1, echo_prompt=True), prompt=prompt, n_hidden=0, rng_seed=0)
    out, p, n = [], start, len(prompt)
    while p < n:
        e = next_chunk(job, p, C).end
        if rnd is not None and n - p > C:
            e = p + rnd.randrange(64, min(C, n - p - 64) + 1, 4)
        out.append((p, e))
        p = e
    return out


def _compute(m: LlamaModel, slot: int, prompt: list[int], batches: list[tuple[int, int]]) -> np.ndarray:
    """The batches of prompt into `slot`; returns the logits of every computed row, then of one
    decode step after the prompt."""
    out = [m.decode(np.array(prompt[p:e], np.int32), np.arange(p, e, dtype=np.int32), np.full(e - p, slot, np.int32),
                    np.ones(e - p, bool)).copy() for p, e in batches]
    n = len(prompt)
    nxt = m.decode(np.array([int(np.argmax(out[-1][-1]))], np.int32), np.array([n], np.int32),
                   np.array([slot], np.int32), np.ones(1, bool)).copy()
    return np.concatenate(out + [nxt])


def _resumed(m: LlamaModel, prompt: list[int], batches: list[tuple[int, int]]) -> np.ndarray:
    """Slot 0 holds the prompt's canonical KV: resume from its first cells in slot 1."""
    m.seq_rm(1)
    m.copy_stream(0, 1)
    m.seq_rm(1, batches[0][0], -1)
    return _compute(m, 1, prompt, batches)


def test_resuming_at_the_resume_point_is_bit_identical(model):
    toks = model.tokenize(" ".join(f"Sentence {i} says something about item {i * 7 % 13}." for i in range(120)),
                          add_special=True, parse_special=False)
    rnd = random.Random(0)
    naive_differs = 0
    for n, cached in CASES:
        off = rnd.randrange(0, len(toks) - n)
        prompt = toks[off:off + n]
        model.seq_rm(0)
        canonical = _compute(model, 0, prompt, _batches(prompt, 0, None))
        model.seq_rm(0, n, -1)  # drop the decode step's cell: slot 0 holds the prompt's KV only
        start = resume_point(cached, n)
        for batches in (_batches(prompt, start, None), _batches(prompt, start, rnd)):
            assert np.array_equal(_resumed(model, prompt, batches), canonical[start:]), (n, cached, batches)
        naive = [(cached, min(cached + C, n))] + ([(cached + C, n)] if cached + C < n else [])
        naive_differs += not np.array_equal(_resumed(model, prompt, naive), canonical[cached:])
    assert naive_differs >= len(CASES) // 2  # resuming anywhere, in any batch, would not be bit-exact
