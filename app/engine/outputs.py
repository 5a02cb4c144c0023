"""What comes out: a finished job's records turned into a GenerationResult (pure; HTTP thread).

The scheduler thread only stores ids and logprobs; detokenizing an echoed prompt and its top-k
alternatives happens here, in the thread of the request that asked for it, so a long echo never
holds up the batch.
"""
from __future__ import annotations

from typing import Sequence

from app.engine.jobs import Job, Record
from app.engine.text import piece_texts
from app.engine.types import Completion, GenerationResult, TokenLogprob


def token_logprob(pieces: Sequence[bytes], text: str, rec: Record, k: int) -> TokenLogprob:
    """One returned token: its text, logprob and top-k alternatives (same text: the larger wins)."""
    top: dict[str, float] = {}
    for t, v in zip(rec.top_ids[:k].tolist(), rec.top_lps[:k].tolist()):
        top.setdefault(pieces[t].decode("utf-8", errors="replace"), v)
    return TokenLogprob(text=text, logprob=rec.logprob, top_logprob=top)


def build_result(job: Job, pieces: Sequence[bytes]) -> GenerationResult:
    """Every sample of a finished job, the echoed prompt first where asked for."""
    req = job.req
    k = req.top_k_per_token
    prompt_tokens: list[TokenLogprob] = []
    if req.echo_prompt:
        shown = job.prompt[job.n_hidden :]
        texts = piece_texts(pieces[t] for t in shown) if shown else []
        for i, text in enumerate(texts):
            rec = job.records[job.n_hidden + i]
            assert rec is not None, f"echo record missing at prompt position {job.n_hidden + i}"
            prompt_tokens.append(token_logprob(pieces, text, rec, k))
    completions = []
    for s in sorted(job.seqs, key=lambda x: x.index) or [None]:
        gen = [] if s is None else [token_logprob(pieces, t, r, k) for t, r in zip(s.gen_texts, s.gen_records)]
        tokens = prompt_tokens + gen
        completions.append(
            Completion(
                text=(req.prompt if req.echo_prompt else "") + ("" if s is None else s.text),
                tokens=tokens,
                logprob=float(sum(t.logprob for t in tokens)),
                finish_reason=(s.finish_reason if s is not None else "") or "length",
            )
        )
    completions *= req.num_samples if not job.seqs else 1  # nothing computed: n identical empty answers
    return GenerationResult(
        completions=completions,
        n_prompt_tokens=len(job.prompt),
        n_cached_tokens=job.n_cached,
        n_generated_tokens=sum(len(s.gen) for s in job.seqs),
        queue_s=(job.admitted or job.submitted) - job.submitted,
        first_token_s=None if job.first_token is None else job.first_token - job.submitted,
    )
