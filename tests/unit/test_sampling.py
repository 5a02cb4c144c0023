"""Ring 1: logprobs, top-k selection and sampling on plain arrays."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from app.engine.sampling import (
    SamplingParams,
    choose_token,
    log_softmax,
    logsumexp_rows,
    token_logprob_and_top,
    top_k_indices,
    top_k_rows,
)

finite = st.floats(-50, 50, allow_nan=False, width=32)


@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.integers(1, 40))
def test_top_k_matches_a_full_sort(values, k):
    got = top_k_indices(values, k)
    # The reference: a full sort by value (descending). Ids may differ only among tied values.
    want = sorted(range(len(values)), key=lambda i: (-values[i], i))[: min(k, len(values))]
    assert values[got].tolist() == values[want].tolist()
    assert len(set(got.tolist())) == len(got)
    if len(set(values.tolist())) == len(values):  # no ties: the very same ids
        assert got.tolist() == want


def test_top_k_rows_is_per_row():
    block = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 5.0, -1.0, 0.0]], dtype=np.float32)
    assert top_k_rows(block, 2).tolist() == [[1, 3], [0, 1]]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 3),
    st.sampled_from([64 * 64, 64 * 9 * 16, 512 * 12]),
    st.integers(1, 16),
    st.sampled_from(["distinct", "ties", "few finite"]),
    st.integers(0, 2**32 - 1),
)
def test_top_k_over_blocks_picks_what_a_pass_over_the_whole_row_picks(m, n, k, kind, seed):
    """Large vocabularies search the k best blocks of ids only; the ids, their order and the
    choice among ties must be exactly those of k argmax passes over the whole row."""
    rng = np.random.default_rng(seed)
    if kind == "distinct":
        block = rng.standard_normal((m, n)).astype(np.float32)
    elif kind == "ties":  # whole numbers: blocks with different bests, ties across blocks below
        block = np.round(rng.standard_normal((m, n)) * 3).astype(np.float32)
    else:  # rows with fewer than k values above -inf, or -inf spread over them
        block = np.full((m, n), -np.inf, dtype=np.float32)
        for row in block:
            ids = rng.integers(0, n, int(rng.integers(0, 2 * k + 1)))
            row[ids] = rng.integers(-2, 3, len(ids))
    want = np.empty((m, k), dtype=np.int64)
    for r in range(m):  # the reference: k passes of argmax, each taking the lowest id among ties
        work = block[r].copy()
        for j in range(k):
            want[r, j] = int(np.argmax(work))
            work[want[r, j]] = -np.inf
    assert top_k_rows(block, k).tolist() == want.tolist()


def test_logsumexp_of_a_row_does_not_depend_on_the_rows_beside_it():
    block = np.random.default_rng(5).normal(scale=4, size=(9, 262_144)).astype(np.float32)
    together = logsumexp_rows(block)
    assert [logsumexp_rows(block[i : i + 1])[0] for i in range(9)] == together.tolist()
    assert logsumexp_rows(block[3:8]).tolist() == together[3:8].tolist()


@given(arrays(np.float32, st.integers(1, 200), elements=finite))
def test_log_softmax_normalises(logits):
    lp = log_softmax(logits)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-9)
    assert logsumexp_rows(logits[None, :])[0] == pytest.approx(np.log(np.exp(logits.astype(np.float64)).sum()))


def test_logprob_is_independent_of_sampling_settings():
    logits = np.array([2.0, 1.0, 0.5, -1.0], dtype=np.float32)
    lp, top, top_lp = token_logprob_and_top(logits, 1, 2)
    ref = log_softmax(logits)
    assert lp == pytest.approx(ref[1])
    assert top.tolist() == [0, 1] and top_lp == pytest.approx(ref[[0, 1]])


def test_greedy_at_helm_temperature():
    logits = np.array([0.1, 3.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert all(choose_token(logits, SamplingParams(temperature=1e-7), rng) == 1 for _ in range(20))


def test_top_k_restricts_the_draw():
    logits = np.zeros(100, dtype=np.float32)
    logits[[7, 42]] = 1.0
    rng = np.random.default_rng(1)
    draws = {choose_token(logits, SamplingParams(temperature=5.0, top_k=2), rng) for _ in range(200)}
    assert draws == {7, 42}


def test_top_p_keeps_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(2)
    draws = {choose_token(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.8), rng) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8


def test_same_seed_same_draws():
    logits = np.random.default_rng(3).normal(size=1000).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=50)
    a = [choose_token(logits, p, np.random.default_rng(9)) for _ in range(5)]
    b = [choose_token(logits, p, np.random.default_rng(9)) for _ in range(5)]
    assert a == b


@settings(max_examples=50, deadline=None)  # a wall-clock deadline is a timing assert: none
@given(st.integers(0, 2**31), st.floats(0.3, 3.0))
def test_draws_follow_the_distribution(seed, temperature):
    # Frequencies over 4 tokens converge on softmax(logits / T): a coarse chi-square-free check.
    logits = np.array([1.0, 0.0, -0.5, 0.5], dtype=np.float32)
    rng = np.random.default_rng(seed)
    n = 2000
    counts = np.bincount([choose_token(logits, SamplingParams(temperature=temperature, top_k=0), rng) for _ in range(n)], minlength=4)
    p = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    assert np.abs(counts / n - p).max() < 0.05
