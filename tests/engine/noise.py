"""How far two runs of the same request may part when llama.cpp does not compute them bit-identically
(prefix reuse, different batch neighbours), and the check that applies it.

The cause: llama.cpp's CPU attention accumulates over a sequence's KV cells in cell order and picks
tiled / one-chunk / split-KV paths by batch shape, so neighbours and reused cells change last bits;
the Q8 quantization of activations in quantized matmuls then turns a last-bit difference into a step
of ~1/127 of a block's scale. Measured on the default model (27 few-shot requests, 1084 recomputed
suffix tokens, echo, reuse on vs off): mean 0.018, p99 0.16, max 0.42 nats. A float32 KV cache or
attention without flash attention leave the picture unchanged (measured: same mean and max).
"""
import math

NOISE_MEAN = 0.05  # nats, mean |difference| of a request's logprobs
NOISE_MAX = 1.0  # nats, the largest single difference, and the margin below which greedy may flip


def agree_unless_near_tie(got, want) -> list[float]:
    """Greedy tokens of `got` follow the reference `want` to the end, or part from it only where the
    reference's top two were closer than NOISE_MAX (needs top_k_per_token >= 2 on the reference).
    Returns the |logprob differences| before any parting."""
    d = []
    for a, b in zip(got.tokens, want.tokens):
        if a.text != b.text:
            margin = b.logprob - b.top_logprob.get(a.text, -math.inf)
            assert margin < NOISE_MAX, f"a confident greedy choice changed: {b.text!r} -> {a.text!r} (margin {margin:.3f})"
            break
        d.append(abs(a.logprob - b.logprob))
    return d
