"""Ring 1: which cached prefix a prompt may share."""
import numpy as np

from app.engine.prefix_cache import CacheEntry, PrefixCache, Record, common_prefix


def rec(k=1):
    return Record(-1.0, np.arange(k), np.full(k, -1.0))


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_longest_prefix_wins_and_limit_applies():
    c = PrefixCache(budget_tokens=100)
    c.add(CacheEntry(0, [1, 2, 3, 4], [None] * 4))
    c.add(CacheEntry(1, [1, 2, 9], [None] * 3))
    e, n = c.best_prefix([1, 2, 3, 4, 5], limit=4)
    assert e.seq_id == 0 and n == 4
    e, n = c.best_prefix([1, 2, 3, 4], limit=3)  # the last prompt token is always computed
    assert n == 3


def test_echo_needs_stored_records():
    c = PrefixCache(budget_tokens=100)
    c.add(CacheEntry(0, [1, 2, 3, 4, 5], [None, rec(), rec(), None, None]))
    # records 1..2 exist, and position n's record is reusable only when n < common prefix.
    _, n = c.best_prefix([1, 2, 3, 4, 5, 6], limit=5, need_top_k=1)
    assert n == 2
    _, n = c.best_prefix([1, 2, 3, 4, 5, 6], limit=5, need_top_k=5)  # stored top lists too short
    assert n == 0


def test_prefix_entries_merge_and_budget_evicts_lru():
    c = PrefixCache(budget_tokens=8)
    assert c.add(CacheEntry(0, [1, 2, 3], [None, rec(), rec()])) == []
    dropped = c.add(CacheEntry(1, [1, 2, 3, 4, 5], [None] * 5))  # supersedes entry 0
    assert [d.seq_id for d in dropped] == [0]
    assert c.entries[0].records[1] is not None  # kept entry 0's scores
    assert [d.seq_id for d in c.add(CacheEntry(2, [1, 2], [None] * 2))] == [2]  # redundant
    dropped = c.add(CacheEntry(3, [7, 8, 9, 10], [None] * 4))  # 9 tokens > 8: LRU goes
    assert [d.seq_id for d in dropped] == [1] and len(c) == 1


def test_cells_shared_with_a_cached_parent_count_once():
    c = PrefixCache(budget_tokens=1000)
    c.add(CacheEntry(0, list(range(100)), [None] * 100, origin=1))
    # Request 2 shared request 1's first 90 cells, then computed 20 of its own.
    c.add(CacheEntry(1, list(range(90)) + [500 + i for i in range(20)], [None] * 110, origin=2, parent=1, n_shared=90))
    assert c.tokens == 100 + 20
    c.remove(c.entries[0])  # the parent goes: its shared cells now belong to the child alone
    assert c.tokens == 110


def test_entries_nobody_shares_go_stale_after_enough_admissions():
    c = PrefixCache(budget_tokens=1000)
    few_shot = CacheEntry(0, list(range(50)), [None] * 50)
    one_off = CacheEntry(1, [900 + t for t in range(20)], [None] * 20)
    c.add(few_shot)
    c.add(one_off)
    for _ in range(3):
        c.admitted()
        c.touch(few_shot)  # shared by every request of its scenario
    assert c.stale(2) == [one_off]  # stored 3 admissions ago, never shared since
    assert c.stale(3) == []
