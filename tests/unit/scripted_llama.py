"""A scripted stand-in for app.engine.llama.LlamaModel: the scheduler's ring-1 tests run on it.

Each slot is a list of tokens by position, as a KV stream would hold them. The logits of a row are
a pure function of its slot's tokens up to and including that row, so a wrong copy, a stale cell
or a missed trim changes the numbers, as it would on a real model. Faults are injected by name.
"""
from __future__ import annotations

import hashlib
import numpy as np

from app.engine.llama import DecodeFailed, ModelInfo

N_VOCAB = 64
EOS = 0


def info(add_bos: bool) -> ModelInfo:
    return ModelInfo(name="scripted", description="scripted stand-in", file_type="F32", n_params=0, size_bytes=0,
                     n_vocab=N_VOCAB, n_ctx_train=4096, add_bos=add_bos, bos=1, gpu_offload=False,
                     kv_bytes_per_cell=1, chat_template=None, bos_text="", eos_text="<eos>")


class ScriptedLlama:
    """Holds n_slots streams; decode() checks that every position is written in order."""

    def __init__(self, n_slots: int, *, add_bos: bool = False) -> None:
        self.n_slots = n_slots
        self.n_vocab = N_VOCAB
        self.info = info(add_bos)
        self.streams: list[dict[int, int]] = [{} for _ in range(n_slots)]
        self.pieces = [b""] + [f" t{i}".encode() for i in range(1, N_VOCAB)]
        self.eog = np.zeros(N_VOCAB, dtype=bool)
        self.eog[EOS] = True
        self.calls: list[tuple[str, tuple]] = []  # ("decode", slots) / ("copy", (src, dst)) / ...
        self.fail_decode_when = None  # callable(slots) -> bool: raise DecodeFailed(-1)
        self.group_limit = n_slots
        self.alone_from = None  # as LlamaModel: positions from which a sequence decodes alone

    def start_token(self) -> int:
        return self.info.bos if self.info.add_bos else EOS

    def decode_group_limit(self, most: int) -> int:
        return min(self.group_limit, most)

    def _logits(self, slot: int, pos: int) -> np.ndarray:
        history = tuple(self.streams[slot][p] for p in range(pos + 1))
        seed = int.from_bytes(hashlib.sha256(repr(history).encode()).digest()[:8], "little")
        row = np.random.default_rng(seed).normal(size=N_VOCAB).astype(np.float32)
        row[EOS] -= 4.0  # an end token is rare, as in real text
        return row

    def decode(self, tokens, pos, seq, want) -> np.ndarray:
        slots = tuple(int(s) for s in seq)
        self.calls.append(("decode", slots))
        if self.fail_decode_when is not None and self.fail_decode_when(slots):
            raise DecodeFailed(-1)
        for t, p, s in zip(tokens, pos, seq):
            stream = self.streams[int(s)]
            assert int(p) == len(stream), f"slot {s}: position {p} written after {len(stream)} positions"
            stream[int(p)] = int(t)
        rows = [self._logits(int(s), int(p)) for p, s, w in zip(pos, seq, want) if w]
        return np.array(rows, dtype=np.float32).reshape(len(rows), N_VOCAB)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        self.calls.append(("rm", (seq, p0, p1)))
        p0 = max(p0, 0)
        stream = self.streams[seq]
        for p in [p for p in stream if p >= p0 and (p1 < 0 or p < p1)]:
            del stream[p]

    def close(self) -> None:
        self.streams = []

    def copy_stream(self, src: int, dst: int) -> None:
        self.calls.append(("copy", (src, dst)))
        self.streams[dst] = dict(self.streams[src])
