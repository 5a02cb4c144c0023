"""Where KV lives: one llama.cpp KV stream per slot, and which reusable tokens each slot holds.

Every slot is a sequence id with a KV stream of its own (kv_unified=false): attention reads only
that stream's cells, and they sit in position order (cell i holds position i), so the numbers a
sequence computes depend on its own tokens only. A slot runs one sample of a job at a time; when
the job ends, its slot keeps the prompt's KV as a prefix-cache entry until the slot is
needed again. Which entry goes first is GreedyDual-Size with cost = tokens held: an entry's priority
is the table's floor when it was last used plus the prompt tokens it would spare a prompt that
reuses it; the lowest goes, net of the tokens another slot holds too (of two copies of a prefix,
one spares nothing), and the floor rises to its priority. Among entries of one size this is
least-recently-used; a 700-token few-shot prefix outlives several 100-token one-off prompts that
came after it, but not forever (each eviction raises the floor). Priority sees only the past: an
entry that a prompt waiting in line will reuse (its first chunk opens that prompt) goes only after
every entry none of them will.

Where a sample decodes: llama.cpp computes a step's sequences in one batch only where their ids
are consecutive (per-stream KV views span a range of streams); scattered ids split a step into one
batch per run, each paying the whole weight pass (measured: 8 decoding sequences on 8 scattered
slots took 1.8-2x as long per step as on 8 consecutive ones). So the lowest N_PARALLEL slots are
the decode region. A prompt that will decode is computed in a region slot next to the sequences
decoding, and its first sample decodes there; one that will not goes outside the region first.
Samples that are not where their prompt was computed (a prefix reused in place outside the region,
samples after the first) get region slots next to the decoding ones by a KV stream copy
(`decode_slots`); the slot that computed the prompt keeps it as a cache entry. An entry in a
region slot that is needed moves out to the slot eviction would free (`_make_room`).

Every computed prompt token is reusable, up to the point `step.resume_point` allows: every batch
of a prompt has the kernel class of the prompt's fresh run (64+ rows for a prompt of 64+ tokens), so
a reused token's KV is bit-identical to a fresh computation. Generated tokens (decoded one at a
time, other kernels) are never reused. This module is pure bookkeeping; the scheduler does the llama.cpp calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

import numpy as np

from app.engine.jobs import Job, Record
from app.engine.step import resume_point


@dataclass(eq=False)
class Slot:
    """One KV stream: the reusable tokens it holds (positions 0..len-1) and who runs in it."""

    id: int
    tokens: list[int] = field(default_factory=list)  # the prompt whose KV this slot holds (a prefix of)
    n_valid: int = 0  # positions 0..n_valid-1 hold KV of `tokens`, computed canonically
    records: list[Record | None] = field(default_factory=list)  # records[i] scores tokens[i] (echo)
    owner: Job | None = None  # the running job using this slot; None: idle (a cache entry if tokens)
    lead: bool = False  # computes its owner's prompt (and decodes its first sample, if that stays here)
    priority: int = 0  # GreedyDual-Size: the table's floor when last used or shared, + n_valid

    def scored_prefix(self, k: int) -> int:
        """The largest m such that records[1..m] exist with at least k alternatives each."""
        for i in range(1, len(self.tokens)):
            r = self.records[i] if i < len(self.records) else None
            if r is None or len(r.top_ids) < k:
                return i - 1
        return max(0, len(self.tokens) - 1)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


@dataclass
class Placement:
    """Where a new job computes its prompt: the lead slot, the slot to copy a prefix from, how much,
    and the cache entries to move out of the way first ((from, to) stream copies, in order)."""

    slot: Slot
    source: Slot | None  # None: nothing reused; the lead itself: reused in place, no copy
    n_reused: int  # prompt tokens whose KV comes from the source (from step.resume_point)
    moves: list[tuple[Slot, Slot]] = field(default_factory=list)


def _apart(s: Slot, ids: Collection[int]) -> bool:
    """Whether neither neighbour of slot s is among `ids` (a sequence there would be its own batch)."""
    return s.id - 1 not in ids and s.id + 1 not in ids


def heads(prompts: Iterable[Sequence[int]], chunk: int) -> set[tuple[int, ...]]:
    """The first `chunk` tokens of each prompt longer than that: what `SlotTable.place` protects."""
    return {tuple(p[:chunk]) for p in prompts if len(p) > chunk}


class SlotTable:
    """The slots, the reuse decisions and the least-recently-used order of idle slots."""

    def __init__(self, n_slots: int, *, chunk: int, reuse: bool = True, region: int | None = None) -> None:
        assert n_slots >= 1 and chunk >= 1
        self.slots = [Slot(id=i) for i in range(n_slots)]
        self.chunk = chunk
        self.reuse = reuse
        self.region = n_slots if region is None else region  # slots [0, region) are where samples decode
        assert 1 <= self.region <= n_slots
        self.floor = 0  # the priority of the last entry evicted (GreedyDual's inflation value)

    def _keep(self, s: Slot) -> None:
        """The slot's entry was just used: its priority is the floor plus the tokens it spares."""
        s.priority = self.floor + s.n_valid

    @property
    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.owner is None]

    @property
    def cached_tokens(self) -> int:
        """Tokens held by idle slots for reuse."""
        return sum(s.n_valid for s in self.idle)

    def reusable(self, prompt: Sequence[int], *, echo_top_k: int = 0) -> tuple[Slot | None, int]:
        """The slot from which `prompt` can reuse the most tokens' KV (step.resume_point), and how
        many. The prompt's last token is always computed (its logits are needed). With echo
        (echo_top_k > 0), positions 1..n must have records, since their logits are not recomputed."""
        if not self.reuse:
            return None, 0
        best, best_n = None, 0
        for s in self.slots:
            lcp = common_prefix(s.tokens, prompt)
            n = min(lcp, len(prompt) - 1, s.n_valid)
            if echo_top_k:
                n = min(n, lcp - 1, s.scored_prefix(echo_top_k))
            n = resume_point(n, len(prompt), source_n=len(s.tokens)) if n > 0 else 0
            if n > best_n or (n == best_n and n > 0 and best is not None and best.owner is not None and s.owner is None):
                best, best_n = s, n
        return best, best_n

    def worth_waiting(self, prompt: Sequence[int]) -> bool:
        """True while a running job is computing a prompt that shares a whole chunk or more with this
        one and has not yet reached the point this prompt would resume from: waiting spares computing
        the shared tokens twice (starting at the last whole chunk recomputed the tail, up to
        chunk - 1 tokens per prompt). A shared start under a chunk, such as a common instruction
        line, is not worth a wait."""
        if not self.reuse:
            return False
        for s in self.slots:
            job = s.owner
            if job is None or job.prefilled or not s.lead:
                continue
            shared = min(common_prefix(job.prompt, prompt), len(prompt) - 1)
            if shared >= self.chunk and resume_point(shared, len(prompt), source_n=len(job.prompt)) > s.n_valid:
                return True
        return False

    def place(self, job: Job, *, echo_top_k: int = 0, upcoming: Collection[tuple[int, ...]] = frozenset(),
              decoding: Collection[int] = frozenset()) -> Placement | None:
        """Choose the slot a job computes its prompt in, or None if none is idle. Takes it (owner =
        job); its samples get their decode slots when the prompt is done (`decode_slots`).
        `upcoming`: the first `chunk` tokens of each prompt waiting in line (`heads`); an entry that
        one of them will reuse is evicted only after every entry none of them will. `decoding`: the
        slots of the sequences decoding now."""
        idle = self.idle
        if not idle:
            return None
        source, n_reused = self.reusable(job.prompt, echo_top_k=echo_top_k)
        if n_reused == 0:
            source = None
        others = [s for s in idle if s is not source]
        moves: list[tuple[Slot, Slot]] = []
        if source is not None and source.owner is None and (2 * n_reused >= source.n_valid or not others):
            # Reuse in place (the lead runs in the slot that holds the prefix) when the prompt
            # continues most of that entry; otherwise the entry stays cached and is copied from, so
            # a short shared start (a common instruction line) never evicts another subject's prefix.
            lead = source
        elif job.decodes and (in_region := [s for s in others if s.id < self.region]):
            # A job that will decode computes its prompt in the region, next to the sequences
            # decoding, so that its first sample decodes where the prompt is: an empty slot, else
            # one whose entry moves out to where eviction would make room (`_make_room`).
            lead = min(in_region, key=lambda s: (bool(s.n_valid), _apart(s, decoding), self._eviction_key(s, upcoming)))
            moves += self._make_room(lead, upcoming, keep_out={source})
        else:
            # An empty slot first, outside the region where there is one (region slots stay free for
            # samples); else the entry of lowest priority net of the tokens another slot holds too
            # (one of two copies of a prefix spares nothing the other does not), after every entry
            # that neither a waiting prompt will reuse nor another slot holds.
            lead = min(others, key=lambda s: (bool(s.n_valid), not s.n_valid and s.id < self.region, self._eviction_key(s, upcoming)))
            self._evict(lead)
        lead.owner, lead.lead = job, True
        if source is not None:
            self._keep(source)
        return Placement(slot=lead, source=source, n_reused=n_reused, moves=moves)

    def decode_slots(self, job: Job, n: int, *, decoding: Collection[int],
                     upcoming: Collection[tuple[int, ...]] = frozenset()) -> tuple[list[Slot], list[tuple[Slot, Slot]]]:
        """The region slots the job's n samples decode in (first sample first; takes them), and the
        cache entries to move out of them first, as (from, to) stream copies in order.

        Samples go to idle region slots or the job's lead (when it lies in the region), one at a
        time, preferring a slot next to one in `decoding` or already chosen (every extra run of ids
        is one more batch in every step they decode: a whole extra pass over the weights), then
        the lead (no copy), then an empty one, then the one eviction would pick. The lead, if not
        chosen, is released and keeps its prompt."""
        lead = next(s for s in self.slots if s.owner is job and s.lead)
        taken = set(decoding)
        chosen: list[Slot] = []
        moves: list[tuple[Slot, Slot]] = []
        for _ in range(n):
            free = [s for s in self.slots[: self.region] if s.owner in (None, job) and s not in chosen]
            if not free:  # cannot happen while running samples are at most the region's size
                raise RuntimeError(f"no decode slot free for a job of {n} samples")
            s = min(free, key=lambda s: (_apart(s, taken), s is not lead, bool(s.n_valid), self._eviction_key(s, upcoming)))
            if s is not lead:
                moves += self._make_room(s, upcoming, keep_out={lead} | {dst for _, dst in moves})
            chosen.append(s)
            taken.add(s.id)
        if lead in chosen:  # the first sample stays where the prompt is
            chosen.remove(lead)
            chosen.insert(0, lead)
        else:
            self.release(lead, keep=True)
        for s in chosen:
            if s is not lead:
                s.owner, s.lead = job, False
        return chosen, moves

    def _make_room(self, s: Slot, upcoming: Collection[tuple[int, ...]], *, keep_out: Collection[Slot]) -> list[tuple[Slot, Slot]]:
        """Empty the idle slot s. Its entry moves to the idle slot outside the region that eviction
        would pick (not one in `keep_out`), which loses its own, when that one goes before s's;
        otherwise s's entry is evicted. So the cache loses what it would lose anyway, at the price
        of one stream copy. Returns the move, if any."""
        out = [v for v in self.slots[self.region :] if v.owner is None and v is not s and v not in keep_out]
        victim = min(out + [s], key=lambda v: self._eviction_key(v, upcoming)) if s.n_valid else s
        self._evict(victim)
        if victim is s:
            return []
        victim.tokens, victim.records, victim.n_valid, victim.priority = s.tokens, s.records, s.n_valid, s.priority
        s.tokens, s.records, s.n_valid = [], [], 0
        return [(s, victim)]

    def _evict(self, s: Slot) -> None:
        """Drop an idle slot's entry; the floor rises to its priority (GreedyDual's inflation)."""
        if s.n_valid:
            self.floor = max(self.floor, s.priority - self._held_elsewhere(s))
        s.tokens, s.records, s.n_valid = [], [], 0

    def _eviction_key(self, s: Slot, upcoming: Collection[tuple[int, ...]]) -> tuple:
        """Which idle slot goes first: an empty one, then the entries as `place` evicts them."""
        if not s.n_valid:
            return (False, float("-inf"), s.id)
        held = self._held_elsewhere(s)
        return (self._wanted(s, upcoming, held), s.priority - held, s.id)

    def _wanted(self, s: Slot, upcoming: Collection[tuple[int, ...]], held: int) -> bool:
        """Whether the entry's first chunk of tokens opens a prompt waiting in line and no other
        slot holds that chunk: a hit already in the queue (the prompt will reuse a chunk or more
        from this entry alone), which the entry's priority cannot see."""
        c = self.chunk
        return held < c <= s.n_valid and tuple(s.tokens[:c]) in upcoming

    def _held_elsewhere(self, s: Slot) -> int:
        """How many of s's cached tokens another slot holds as well: an idle entry, or the prompt a
        running job is computing (kept when it ends)."""
        most = 0
        for t in self.slots:
            held = len(t.tokens) if t.owner is not None and t.lead else t.n_valid
            if t is not s and held > most and t.tokens and t.tokens[0] == s.tokens[0]:
                most = max(most, min(common_prefix(s.tokens, t.tokens), held, s.n_valid))
        return most

    def computed(self, slot: Slot, prompt: list[int], n_past: int, records: list[Record | None]) -> None:
        """The lead has computed `prompt` up to n_past: advertise those tokens for reuse."""
        slot.tokens, slot.records = prompt, records
        slot.n_valid = n_past

    def release(self, slot: Slot, *, keep: bool) -> None:
        """The slot's job ended: it keeps its computed prompt tokens for reuse, or is emptied."""
        slot.owner, slot.lead = None, False
        if not keep:
            slot.tokens, slot.records, slot.n_valid = [], [], 0
        self._keep(slot)
