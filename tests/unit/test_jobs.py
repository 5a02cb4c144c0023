"""A sequence's own bookkeeping (app/engine/jobs.py): appending tokens, stop cutting, the end."""
from __future__ import annotations

import numpy as np

from app.engine.jobs import Record, Seq
from app.engine.types import GenerationRequest

REC = Record(-0.5, np.array([1]), np.array([-0.5]))


def _seq(pieces: list[bytes], req: GenerationRequest) -> tuple[Seq, str]:
    """Feed pieces as the scheduler does; stop at the first ending."""
    s = Seq(slot=0, job=None, index=0, rng=np.random.default_rng(0))
    for i, piece in enumerate(pieces):
        before = s.add(i, REC, s.decoder.feed(piece))
        reason = s.ending(req, before)
        if reason:
            s.finish(reason)
            return s, reason
    return s, ""


def test_a_stop_straddling_tokens_cuts_text_and_tokens_together():
    req = GenerationRequest(prompt="x", max_new_tokens=10, stop_sequences=("\n\n",))
    s, reason = _seq([b"Hel", b"lo\n", b"\nmore", b"never"], req)
    assert reason == "stop" and s.text == "Hello"
    assert s.gen == [0, 1] and s.gen_texts == ["Hel", "lo"] and len(s.gen_records) == 2
    assert "".join(s.gen_texts) == s.text


def test_a_stop_at_a_token_boundary_drops_that_token():
    req = GenerationRequest(prompt="x", max_new_tokens=10, stop_sequences=("END",))
    s, reason = _seq([b"ab", b"END", b"c"], req)
    assert reason == "stop" and s.gen == [0] and s.gen_texts == ["ab"] and s.text == "ab"


def test_length_ends_at_max_new_tokens_and_flushes_an_unfinished_character():
    req = GenerationRequest(prompt="x", max_new_tokens=2)
    s, reason = _seq([b"a", "é".encode()[:1], b"never"], req)
    assert reason == "length" and s.gen == [0, 1]
    assert s.gen_texts == ["a", "\ufffd"] and s.text == "a\ufffd" and s.finish_reason == "length"


def test_no_ending_goes_on():
    req = GenerationRequest(prompt="x", max_new_tokens=5, stop_sequences=("zz",))
    s, reason = _seq([b"a", b"z", b"b"], req)
    assert reason == "" and s.text == "azb" and s.finish_reason == ""
