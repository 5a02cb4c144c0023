"""Ring 1: KV slots: reuse from kernel-safe resume points, batches of one kernel class, echo records, placement order, release, and step plans."""
import numpy as np

from app.engine.jobs import Job, Record, Seq
from app.engine.slots import SlotTable, common_prefix, heads
from app.engine.step import KERNEL_ROW_STEPS, ROW_GROUP, min_rows, next_chunk, plan, resume_point
from app.engine.types import GenerationRequest


def job(prompt, *, n=1, echo=False, max_new=4):
    return Job(req=GenerationRequest(prompt="x", num_samples=n, echo_prompt=echo, max_new_tokens=max_new),
               prompt=list(prompt), n_hidden=0, rng_seed=0)


def rec(k=1):
    return Record(-1.0, np.arange(k), np.full(k, -1.0))


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2, 3]) == 2


def test_resume_point_leaves_a_batch_of_the_prompts_kernel_class():
    assert resume_point(200, 300) == 200  # right where the shared prefix ends
    assert resume_point(150, 300) == 148  # on a row group of 4
    assert resume_point(289, 290) == 224  # a prompt of 64+ tokens computes 64 rows at least
    assert resume_point(30, 40) == 28 and resume_point(35, 40) == 32  # under 64: 8 rows at least
    assert resume_point(6, 7) == 4 and resume_point(5, 9) == 0  # a 7-token prompt: 2 rows at least
    assert resume_point(50, 400, source_n=50) == 0  # the source's rows: a 50-row batch, other kernels
    assert resume_point(50, 400, source_n=64) == 48


def test_every_batch_from_any_resume_point_has_the_prompts_kernel_class():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(2, 1000))
        source_n = int(rng.integers(1, 1000))
        cached = int(rng.integers(0, min(n, source_n + 1)))
        s = resume_point(cached, n, source_n=source_n)
        assert 0 <= s <= cached and s % ROW_GROUP == 0
        assert s == 0 or min_rows(n) == min_rows(source_n)  # reused rows: the same kernels
        j, start, ends = job(range(n)), s, []
        while start < n:
            c = next_chunk(j, start, 128)
            assert c.start == start and 0 < c.end - c.start <= 128
            assert [c.end - c.start >= t for t in KERNEL_ROW_STEPS] == [n >= t for t in KERNEL_ROW_STEPS], (n, s, c)
            start = c.end
            ends.append(c.end)
        assert all(e % ROW_GROUP == 0 for e in ends[:-1])  # repacked weights: rows grouped alike


def test_reuse_resumes_where_the_kernels_allow_and_spares_the_last_token():
    t = SlotTable(3, chunk=128)
    t.slots[1].tokens, t.slots[1].n_valid = list(range(300)), 300
    assert t.reusable(list(range(200)) + [-1] * 100)[1] == 200
    assert t.reusable(list(range(300)))[1] == 236  # a batch of 64 rows at least is computed
    assert t.reusable(list(range(301)))[1] == 236
    assert t.reusable(list(range(450)))[1] == 300  # all of it
    assert t.reusable([99] + list(range(1, 300)))[1] == 0
    t.slots[1].n_valid = 130  # only part of its KV is valid (a prompt still being computed)
    assert t.reusable(list(range(301)))[1] == 128
    t.slots[1].tokens, t.slots[1].n_valid = list(range(50)), 50  # one batch of 50 rows: other kernels
    assert t.reusable(list(range(400)))[1] == 0


def test_echo_needs_records_up_to_the_reused_length():
    t = SlotTable(2, chunk=4)
    s = t.slots[0]
    s.tokens, s.n_valid = list(range(12)), 12
    s.records = [None] + [rec(2)] * 11
    assert t.reusable(list(range(20)), echo_top_k=2)[1] == 8  # records 1..8 exist, lcp - 1 = 11
    s.tokens, s.n_valid = list(range(14)), 8  # the record of position 8 scores tokens[8]: known
    s.records = [None] + [rec(2)] * 13
    assert t.reusable(list(range(20)), echo_top_k=2)[1] == 8
    assert t.reusable(list(range(20)), echo_top_k=3)[1] == 0  # too few alternatives stored
    s.records = [None] + [rec(2)] * 5 + [None] * 8
    assert t.reusable(list(range(20)), echo_top_k=1)[1] == 4


def test_placement_reuses_in_place_then_takes_empty_then_lowest_priority():
    t = SlotTable(4, chunk=128)
    t.slots[2].tokens, t.slots[2].n_valid, t.slots[2].priority = list(range(80)), 80, 80
    t.slots[3].tokens, t.slots[3].n_valid, t.slots[3].priority = [50, 51, 52, 53], 4, 4
    p = t.place(job(list(range(200)), n=2))  # a job takes one slot for its prompt, whatever its samples
    assert p.slot.id == 2 and p.source is t.slots[2] and p.n_reused == 80 and p.slot.lead
    assert [s.owner is not None for s in t.slots] == [False, False, True, False]
    q = t.place(job([7, 7, 7, 7, 7]))  # an empty slot first
    assert q.slot.id == 0 and q.source is None
    t.place(job([8] * 5))
    r = t.place(job([9] * 5))  # no empty slot left: slot 3 (a cache entry) is evicted
    assert r.slot.id == 3 and t.slots[3].n_valid == 0
    assert t.floor == 4  # the evicted entry's priority
    assert t.place(job([1, 2])) is None  # nothing idle


def test_an_empty_slot_outside_the_decode_region_first_for_a_prompt_that_will_not_decode():
    t = SlotTable(4, chunk=128, region=2)
    assert t.place(job([1] * 5, max_new=1)).slot.id == 2
    assert t.place(job([2] * 5, max_new=0, echo=True)).slot.id == 3
    assert t.place(job([3] * 5, max_new=1)).slot.id == 0  # then the region's
    t2 = SlotTable(4, chunk=128, region=2)
    assert t2.place(job([1] * 5, max_new=2)).slot.id == 0  # one that will: the region's first


def prefilled(t, prompt, decoding=frozenset(), **kw):
    """Place a job and compute its whole prompt in its lead slot."""
    j = job(prompt, **kw)
    p = t.place(j, decoding=decoding)
    t.computed(p.slot, list(prompt), len(prompt), [])
    return j, p.slot


def test_samples_decode_next_to_the_decoding_sequences_and_entries_move_out_of_the_way():
    t = SlotTable(8, chunk=4, region=4)
    for i, prio in zip((4, 5, 6, 7), (8, 10, 11, 12)):  # entries outside the region
        t.slots[i].tokens, t.slots[i].n_valid, t.slots[i].priority = [100 + i] * 8, 8, prio
    for i in (1, 2, 3):  # and in it, of higher priority
        t.slots[i].tokens, t.slots[i].n_valid, t.slots[i].priority = [200 + i] * 8, 8, 20 + i
    a, home = prefilled(t, [1] * 12)
    assert home.id == 0  # the only empty slot
    assert t.decode_slots(a, 1, decoding=set()) == ([home], []) and home.lead  # in the region: no copy
    b = job([2] * 12)
    placed = t.place(b, decoding={0})
    # a prompt that will decode goes to the region, next to slot 0; the entry there moves to where
    # eviction makes room (slot 4, priority 8)
    assert placed.slot.id == 1 and [(x.id, y.id) for x, y in placed.moves] == [(1, 4)]
    assert t.slots[4].tokens == [201] * 8 and t.slots[4].priority == 21 and t.floor == 8
    t.computed(placed.slot, b.prompt, 12, [])
    got, moves = t.decode_slots(b, 2, decoding={0})
    assert [s.id for s in got] == [1, 2]  # the first sample where its prompt is, the second next to it
    assert [(x.id, y.id) for x, y in moves] == [(2, 5)] and t.slots[5].tokens == [202] * 8 and t.floor == 10
    assert got[0].lead and not got[1].lead and got[1].owner is b and got[1].n_valid == 0
    t.slots[6].priority = 30  # slot 7 (12) is now the lowest outside
    c, home_c = prefilled(t, [3] * 12, max_new=1)  # one that will not decode: the lowest entry anywhere
    assert home_c.id == 7 and t.floor == 12
    d = job([4] * 12)
    placed = t.place(d, decoding={0, 1, 2})  # next to slot 2; slot 3's entry (23) evicts slot 4's (21)
    assert placed.slot.id == 3 and [(x.id, y.id) for x, y in placed.moves] == [(3, 4)]
    assert t.slots[4].tokens == [203] * 8 and t.floor == 21
    e = job([5] * 12)
    t.slots[3].owner = None
    t.slots[3].tokens, t.slots[3].n_valid, t.slots[3].priority = [7] * 8, 8, 0
    placed = t.place(e, decoding={0, 1, 2})
    assert placed.slot.id == 3 and placed.moves == []  # its entry is the lowest of all: evicted, not moved


def test_a_prompt_that_will_decode_goes_next_to_the_decoding_ones():
    t = SlotTable(6, chunk=4, region=4)
    t.slots[2].owner = "someone"  # slot 2 decodes
    b, home = prefilled(t, [2] * 12, decoding={2})
    assert home.id == 1  # an empty region slot next to slot 2
    assert t.decode_slots(b, 1, decoding={2}) == ([home], [])  # decodes where its prompt is
    mmlu, at = prefilled(t, [9] * 12, max_new=1)
    assert at.id == 4  # a prompt that will not decode: outside the region
    t.release(at, keep=True)
    d, home_d = prefilled(t, [9] * 12 + [8] * 4, decoding={1, 2})
    assert home_d is at  # reuses that entry in place
    got, moves = t.decode_slots(d, 1, decoding={1, 2})
    assert [s.id for s in got] == [0] and moves == [] and at.owner is None and at.tokens == [9] * 12 + [8] * 4

def run(t, prompt):
    """Place a one-sample job, compute its whole prompt, release it: it stays cached."""
    p = t.place(job(prompt))
    t.computed(p.slot, list(prompt), len(prompt), [])
    t.release(p.slot, keep=True)
    return p.slot.id


def test_eviction_keeps_a_long_prefix_past_short_one_off_prompts_but_not_forever():
    t = SlotTable(3, chunk=128)
    long = list(range(700))
    at = run(t, long)
    shorts = [[1000 + 100 * i + k for k in range(100)] for i in range(20)]
    for i in range(6):  # least-recently-used would have evicted it at the second short prompt
        run(t, shorts[i])
        assert t.slots[at].tokens == long, i
    assert t.reusable(long[:600] + [-1] * 100) == (t.slots[at], 600)
    for i in range(6, 20):  # each eviction raises the floor: it goes in the end
        run(t, shorts[i])
    assert t.slots[at].tokens != long
    t2 = SlotTable(3, chunk=128)
    at = run(t2, long)
    for i in range(20):  # reused now and then, it stays
        run(t2, shorts[i])
        if i % 5 == 4:  # shares 300 of its 700 tokens: copied from, and refreshed
            p = t2.place(job(long[:300] + [-2] * 100))
            assert p.source is t2.slots[at] and p.slot is not p.source and p.n_reused == 300
            for s in t2.slots:
                if s.owner is not None:
                    t2.release(s, keep=False)
    assert t2.slots[at].tokens == long
    same = SlotTable(3, chunk=4)  # entries of one size: least recently used goes first
    a, b = run(same, [1] * 8), run(same, [2] * 8)
    run(same, [3] * 8)
    assert same.slots[a].n_valid == 8 and same.slots[b].n_valid == 8
    run(same, [4] * 8)
    assert same.slots[a].tokens == [4] * 8 and same.slots[b].tokens == [2] * 8


def test_an_entry_that_a_waiting_prompt_will_reuse_goes_after_every_other():
    """Evicting old long entries raises the floor past a subject prefix cached since: by priority
    it goes before the short one-off prompts cached after it. Its subject's next question, waiting
    in line, keeps it (a hit already in the queue)."""
    subject = list(range(700))
    question = subject + [-1] * 100
    shorts = [[1000 + 100 * i + k for k in range(100)] for i in range(8)]

    def table(upcoming):
        t = SlotTable(4, chunk=128)  # the prefix goes into the empty slot; then the old ones go
        for s, base in zip(t.slots, (10_000, 20_000, 30_000)):  # an earlier run's long entries
            s.tokens, s.n_valid, s.priority = list(range(base, base + 800)), 800, 800
        p = t.place(job(subject + [-2] * 120), upcoming=upcoming)
        t.computed(p.slot, p.slot.owner.prompt, 820, [])
        t.release(p.slot, keep=True)
        for prompt in shorts:
            p = t.place(job(prompt), upcoming=upcoming)
            t.computed(p.slot, list(prompt), 100, [])
            t.release(p.slot, keep=True)
        return t

    assert table(frozenset()).reusable(question)[1] == 0  # priority alone: the prefix went
    waiting = heads([question, shorts[0][:50]], 128)  # a short prompt has no whole chunk to protect
    assert waiting == {tuple(subject[:128])}
    t = table(waiting)
    assert t.reusable(question)[1] == 700
    assert sum(1 for s in t.slots if s.n_valid == 100) == 3  # the shorts took turns in the others
    twice = SlotTable(3, chunk=128)  # the prefix cached twice: one copy goes before a prefix held once
    other = list(range(50_000, 50_700))
    for s, tokens, prio in zip(twice.slots, (subject + [-3] * 50, subject + [-4] * 60, other), (900, 910, 800)):
        s.tokens, s.n_valid, s.priority = tokens, len(tokens), prio
    gone = twice.place(job(shorts[0]), upcoming=waiting).slot
    assert gone.id in (0, 1) and twice.slots[2].tokens == other
    assert twice.place(job(shorts[1]), upcoming=waiting).slot is twice.slots[2]  # the last copy: wanted
    everyone = SlotTable(1, chunk=128)  # nothing else to evict: a wanted entry still goes
    everyone.slots[0].tokens, everyone.slots[0].n_valid = subject, 700
    assert everyone.place(job(shorts[0]), upcoming=waiting).slot.n_valid == 0


def test_of_two_copies_of_a_prefix_one_goes_before_a_prefix_held_once():
    """Two jobs of one subject admitted together each compute their question in a slot of their
    own, so the subject's prefix ends up cached twice. Evicting one copy loses nothing; evicting
    an older subject held once (plain GreedyDual-Size's choice here) loses its whole prefix."""
    t = SlotTable(3, chunk=128)
    older = list(range(10_000, 10_700))
    run(t, older)  # subject A, cached first: the lowest priority
    subject_b = list(range(700))
    b1, b2 = job(subject_b + [-1] * 100), job(subject_b + [-2] * 120)
    p1, p2 = t.place(b1), t.place(b2)  # admitted in the same step: each computes the prefix
    for p, j in ((p1, b1), (p2, b2)):
        t.computed(p.slot, j.prompt, len(j.prompt), [None] * len(j.prompt))
        t.release(p.slot, keep=True)
    assert sorted(s.n_valid for s in t.slots) == [700, 800, 820]
    run(t, list(range(20_000, 20_300)))  # a new subject: one of B's two copies goes, not A
    assert any(s.tokens == older for s in t.slots)
    assert sum(1 for s in t.slots if s.tokens[:700] == subject_b) == 1
    assert t.reusable(subject_b + [-3] * 50)[1] == resume_point(700, 750)
    run(t, list(range(30_000, 30_300)))  # the last copy of B is held once again: worth its size
    assert any(s.tokens[:700] == subject_b for s in t.slots)


def test_a_short_shared_start_copies_from_an_entry_instead_of_evicting_it():
    t = SlotTable(3, chunk=128)
    t.slots[0].tokens, t.slots[0].n_valid, t.slots[0].priority = list(range(700)), 700, 700
    p = t.place(job(list(range(10)) + [-1] * 500))  # shares 10 tokens: resume at 8, copied
    assert p.source is t.slots[0] and p.n_reused == 8 and p.slot is not t.slots[0]
    assert t.slots[0].n_valid == 700 and t.slots[0].owner is None  # still cached
    q = t.place(job(list(range(600)) + [-1] * 50))  # continues most of it: reused in place
    assert q.slot is t.slots[0] and q.source is t.slots[0] and q.n_reused == 584  # 64 rows left
    t2 = SlotTable(1, chunk=128)
    t2.slots[0].tokens, t2.slots[0].n_valid = list(range(700)), 700
    assert t2.place(job(list(range(12)) + [-1] * 500)).slot is t2.slots[0]  # no other slot: in place


def test_release_keeps_the_computed_prompt_of_the_lead():
    t = SlotTable(2, chunk=4)
    j = job(list(range(10)))
    p = t.place(j)
    t.computed(p.slot, j.prompt, 7, [None] * 10)
    t.release(p.slot, keep=True)
    assert p.slot.owner is None and p.slot.n_valid == 7 and t.cached_tokens == 7
    p = t.place(job([9, 9]))
    t.release(p.slot, keep=False)
    assert p.slot.n_valid == 0 and p.slot.tokens == []


def test_worth_waiting_only_for_whole_chunks_still_being_computed():
    t = SlotTable(3, chunk=4)
    a = job(list(range(20)))
    p = t.place(a)
    a.seqs = [Seq(slot=p.slot.id, job=a, index=0, rng=np.random.default_rng(0))]
    assert t.worth_waiting(list(range(12)) + [99])
    t.computed(p.slot, a.prompt, 12, [])
    a.n_past = 12
    assert not t.worth_waiting(list(range(12)) + [99])  # all it could share is computed
    assert not t.worth_waiting([5, 5, 5, 5, 5])
    assert not t.worth_waiting([0, 1, 2, 99])  # shares less than a chunk: not worth a wait


def test_a_prompt_waits_until_the_whole_shared_prefix_is_computed_not_just_its_whole_chunks():
    t = SlotTable(3, chunk=128)
    a = job(list(range(200)))
    p = t.place(a)
    a.seqs = [Seq(slot=p.slot.id, job=a, index=0, rng=np.random.default_rng(0))]
    waiting = list(range(150)) + [-1] * 70  # shares 150 tokens: it would resume at 148
    assert resume_point(150, len(waiting), source_n=200) == 148
    t.computed(p.slot, a.prompt, 128, [])
    assert t.worth_waiting(waiting)  # starting now would compute positions 128..147 a second time
    t.computed(p.slot, a.prompt, 148, [])
    assert not t.worth_waiting(waiting)
    assert t.reusable(waiting)[1] == 148


def test_chunks_end_where_a_batch_of_64_rows_is_left():
    j = job(list(range(300)), max_new=3)
    assert [(c.start, c.end) for c in [next_chunk(j, 0, 128), next_chunk(j, 128, 128), next_chunk(j, 236, 128)]] == \
        [(0, 128), (128, 236), (236, 300)]  # not (256, 300): a 44-row batch takes other kernels
    assert (next_chunk(j, 200, 128).end, next_chunk(j, 100, 128).end) == (300, 228)
    assert next_chunk(j, 236, 128).rows == [299]  # only the last row, for the first new token
    assert next_chunk(j, 0, 128).rows == []
    echo = job(list(range(300)), echo=True, max_new=0)
    assert next_chunk(echo, 236, 128).rows == list(range(236, 300))  # echo: every row, whatever else it does
    small = job(list(range(40)))
    assert [(c.start, c.end) for c in (next_chunk(small, 0, 128), next_chunk(small, 28, 128))] == [(0, 40), (28, 40)]


def test_plan_decodes_everyone_and_spends_the_prompt_budget_oldest_first():
    a, b = job(list(range(300))), job(list(range(1000, 1300)))
    for k, j in enumerate((a, b)):
        j.seqs = [Seq(slot=k, job=j, index=0, rng=np.random.default_rng(0))]
    gens = [Seq(slot=s, job=a, index=0, rng=np.random.default_rng(0)) for s in (5, 2, 3)]
    step = plan(gens, [a, b], chunk=128, budget=200, group_limit=2)
    assert [[s.slot for s in g] for g in step.groups] == [[2, 3], [5]]
    assert [(c.job is a, c.start, c.end) for c in step.chunks] == [(True, 0, 128), (True, 128, 236)]
    b.n_past, a.n_past = 0, 300
    assert [(c.job is b, c.start) for c in plan([], [a, b], chunk=128, budget=1, group_limit=8).chunks] == [(True, 0)]


def test_plan_decodes_a_sequence_alone_from_the_extent_where_its_kernel_would_change():
    a = job(list(range(20)))
    seqs = [Seq(slot=s, job=a, index=0, rng=np.random.default_rng(0)) for s in range(4)]
    for s, n_past in zip(seqs, (255, 256, 10, 300)):
        s.n_past = n_past  # the next token goes at position n_past
    step = plan(seqs, [], chunk=128, budget=8, group_limit=8, alone_from=256)
    assert [[s.slot for s in g] for g in step.groups] == [[0, 2], [1], [3]]
    assert [[s.slot for s in g] for g in plan(seqs, [], chunk=128, budget=8, group_limit=8).groups] == [[0, 1, 2, 3]]


def test_an_entry_never_moves_onto_the_prefix_a_prompt_copies_from():
    t = SlotTable(4, chunk=4, region=2)
    t.slots[2].tokens, t.slots[2].n_valid, t.slots[2].priority = list(range(40)), 40, 1  # the lowest
    t.slots[3].tokens, t.slots[3].n_valid, t.slots[3].priority = [500] * 8, 8, 50
    t.slots[0].tokens, t.slots[0].n_valid, t.slots[0].priority = [600] * 8, 8, 30
    t.slots[1].tokens, t.slots[1].n_valid, t.slots[1].priority = [601] * 8, 8, 31
    placed = t.place(job(list(range(8)) + [9] * 12))  # shares 8 of slot 2's 40 tokens: copies them
    assert placed.source is t.slots[2] and placed.n_reused == 8 and placed.slot.id == 0
    assert placed.moves == [] and t.slots[2].tokens == list(range(40))  # slot 0's entry is evicted instead
    assert t.floor == 30
