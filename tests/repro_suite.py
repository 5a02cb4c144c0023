"""The reproducibility suite: a HELM-shaped mix of requests, run three ways, compared byte for byte.

Run 1 is serial on a fresh engine or server. Run 2 follows a warm-up with unrelated prompts (the
prefix cache fills with other entries) and sends everything at once from 16 clients. Run 3 does the
same with the requests shuffled. Every answer must be identical to run 1's: text, every token's
logprob and every top_logprob, to the last bit.
"""
from __future__ import annotations

import concurrent.futures as cf
import random
from typing import Callable

SUBJECTS = ["astronomy", "law", "chemistry"]


def _shots(subject: str, n: int = 6) -> str:
    return "".join(
        f"The following is a question about {subject}, number {i}: which of these statements about "
        f"{subject} and its history is the most accurate one, considering every option?\n"
        f"A. the first\nB. the second\nC. the third\nD. the fourth\nAnswer: {'ABCD'[(i * 7) % 4]}\n\n"
        for i in range(n)
    )


def requests() -> list[dict]:
    """/process bodies: generation with stops, echo scoring, top-k 5, n=3 seeded samples, and few-shot
    prompts whose prefixes span several chunks (so prefix reuse, or its absence, is exercised)."""
    greedy = {"temperature": 1e-7}
    out = []
    for s in SUBJECTS:
        for q in range(3):
            out.append({"prompt": _shots(s) + f"Question {q}: what is {q} times {s}?\nAnswer:", "max_new_tokens": 1,
                        "top_k_per_token": 5, "echo_prompt": False, **greedy})
    # Questions of ~100 tokens after a shared 8-shot prefix: the second resumes the first's prefix
    # in the middle of a 128-row chunk (the first two only near the end of a short last chunk).
    for q in range(2):
        question = " ".join(f"Consider case {q}.{i}, where the {SUBJECTS[i % 3]} rule applies twice." for i in range(9))
        out.append({"prompt": _shots("history", 8) + question + "\nAnswer:", "max_new_tokens": 2,
                    "top_k_per_token": 5, **greedy})
    for s in SUBJECTS[:2]:
        out.append({"prompt": _shots(s) + "The capital of France is", "max_new_tokens": 0, "echo_prompt": True,
                    "top_k_per_token": 5, **greedy})
    for p in ["Q: What is 2+2?\nA:", "Once upon a time, in a village by the sea,", "def fibonacci(n):\n    ",
              "List three fruits:\n1."]:
        out.append({"prompt": p, "max_new_tokens": 24, "stop_sequences": ["\n\n", "4."], "top_k_per_token": 5,
                    **greedy})
    # Generation past 256 KV cells, where a lone decode row and a row in a group take different
    # attention kernels (the scheduler decodes such sequences alone): one starts past it, one
    # crosses it while generating.
    for s, n in (("chemistry", 6), ("astronomy", 4)):
        out.append({"prompt": _shots(s, n) + "Explain the rule in one sentence:", "max_new_tokens": 32,
                    "top_k_per_token": 5, **greedy})
    out.append({"prompt": _shots("law", 3) + "Summarise the rule:", "max_new_tokens": 16, "num_return_sequences": 3,
                "temperature": 0.9, "top_p": 0.95, "seed": 11, "top_k_per_token": 5})
    out.append({"prompt": "The mitochondria is", "max_new_tokens": 12, "num_return_sequences": 3, "temperature": 1.0,
                "seed": 5, "top_k_per_token": 2, "echo_prompt": True})
    return out


def warmup() -> list[dict]:
    """Unrelated prompts that fill the prefix cache with other entries first."""
    return [{"prompt": _shots(s, 4) + "Something else entirely.", "max_new_tokens": 4, "temperature": 1e-7}
            for s in ("geology", "music", "poetry", "tax law", "botany", "chess", "sailing", "opera")]


def run_three_ways(send: Callable[[dict], dict], *, clients: int = 16) -> tuple[list, list, list]:
    """Serial, then (after the warm-up) concurrent, then concurrent shuffled; answers in suite order."""
    suite = requests()
    serial = [send(r) for r in suite]
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, warmup()))
        concurrent = list(pool.map(send, suite))
        order = list(range(len(suite)))
        random.Random(1).shuffle(order)
        shuffled = dict(zip(order, pool.map(send, [suite[i] for i in order])))
    return serial, concurrent, [shuffled[i] for i in range(len(suite))]


def differences(want: list, got: list) -> list[str]:
    """Where two runs' answers differ (empty when byte-identical), one line per request."""
    return [f"request {i}: {_first_difference(a, b)}" for i, (a, b) in enumerate(zip(want, got)) if a != b]


def _first_difference(a, b, path="") -> str:
    if type(a) is not type(b) or not isinstance(a, (dict, list)):
        return f"{path or 'answer'}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in a.keys() | b.keys():
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: lengths {len(a)} != {len(b)}"
