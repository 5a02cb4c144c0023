"""The benchmark's loads: HELM- and MMLU-shaped prompts drawn anew for every run (seeded).

Texts are built from varied sentences (subjects, verbs, objects, clauses), so no two prompts share
more than what a real scenario shares: the few-shot prefix of a subject. Every load takes a seed;
the benchmark never sends a server a prompt it has seen in another row or repetition.
"""
from __future__ import annotations

import random

SUBJECTS = [
    "abstract algebra", "anatomy", "astronomy", "business ethics", "clinical knowledge", "college biology",
    "college chemistry", "computer security", "econometrics", "electrical engineering", "formal logic",
    "global facts", "high school geography", "jurisprudence", "machine learning", "marketing", "nutrition",
    "philosophy", "prehistory", "public relations", "sociology", "virology", "world religions", "us foreign policy",
]
_NOUNS = ("the committee the river the enzyme the market the court the planet the algorithm the village the treaty "
          "the protein the engine the senate the glacier the museum the theorem the harbour the orchestra the vaccine "
          "the railway the archive").split(" the ")
_VERBS = ["measured", "rejected", "described", "predicted", "replaced", "funded", "observed", "questioned",
          "translated", "protected", "reduced", "explained", "compared", "documented", "delayed", "restored"]
_CLAUSES = ["after a long winter", "because the data were incomplete", "despite strong objections",
            "within three weeks", "under the new rules", "for the first time in decades", "at a modest cost",
            "while the results were still disputed", "in the northern provinces", "with surprising accuracy"]


def sentence(rnd: random.Random) -> str:
    a, b = rnd.sample(_NOUNS, 2)
    a = a.removeprefix("the ")
    return f"The {a} {rnd.choice(_VERBS)} the {b.removeprefix('the ')} {rnd.choice(_CLAUSES)}."


def text(rnd: random.Random, n_sentences: int) -> str:
    return " ".join(sentence(rnd) for _ in range(n_sentences))


def question(rnd: random.Random, n_sentences: int, answer: str | None) -> str:
    opts = "".join(f"\n{c}. {sentence(rnd)}" for c in "ABCD")
    tail = f" {answer}\n\n" if answer else ""
    return f"Question: {text(rnd, n_sentences)} Which statement follows?{opts}\nAnswer:{tail}"


def few_shot_prefix(rnd: random.Random, subject: str) -> str:
    """A 5-shot prefix of ~640-740 tokens (SmolLM2's tokenizer) for one subject."""
    shots = "".join(question(rnd, rnd.randint(6, 7), rnd.choice("ABCD")) for _ in range(5))
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n{shots}"


def mmlu(seed: int, *, subjects: int, n: int) -> list[str]:
    """n MMLU-shaped prompts over `subjects` subjects interleaved at random: a subject's 5-shot prefix
    plus a question of ~100-180 tokens."""
    rnd = random.Random(seed)
    names = rnd.sample(SUBJECTS, subjects)
    heads = {s: few_shot_prefix(rnd, s) for s in names}
    return [heads[rnd.choice(names)] + question(rnd, rnd.randint(4, 8), None) for _ in range(n)]


def unrelated(seed: int, n: int, sentences: int = 50) -> list[str]:
    """Prompts that share nothing with any scenario: ~520 tokens (SmolLM2) at 50 sentences."""
    rnd = random.Random(seed)
    return [f"Notes {seed}-{i}: " + text(rnd, sentences) for i in range(n)]


def helm_mix(seed: int) -> list[dict]:
    """A HELM-shaped mix of /process bodies: few-shot generation with stops, echo scoring with
    top-k 5, and n=3 seeded samples."""
    rnd = random.Random(seed)
    greedy = {"temperature": 1e-7, "top_k_per_token": 5}
    out: list[dict] = []
    for p in mmlu(seed, subjects=3, n=12):
        out.append({"prompt": p, "max_new_tokens": 1, **greedy})
    for _ in range(8):
        out.append({"prompt": text(rnd, 12) + "\nSummary:", "max_new_tokens": 24, "stop_sequences": ["\n"], **greedy})
    for _ in range(8):
        out.append({"prompt": text(rnd, 10), "max_new_tokens": 0, "echo_prompt": True, **greedy})
    for k in range(4):
        out.append({"prompt": text(rnd, 6) + "\nContinue:", "max_new_tokens": 16, "num_return_sequences": 3,
                    "temperature": 0.8, "seed": seed * 10 + k, "top_k_per_token": 5})
    rnd.shuffle(out)
    return out


def prefix_floor(token_lists: list[list[int]]) -> tuple[int, int]:
    """(all tokens, distinct prefixes) of tokenized prompts. The second is the fewest prompt tokens
    any prefix cache computes for them, in any order: each distinct prefix ends in one token that
    must be computed once, and a cache that kept everything computes nothing more."""
    trie: dict = {}  # token -> the trie of what follows it
    distinct = 0
    for toks in token_lists:
        node = trie
        for t in toks:
            if t not in node:
                node[t] = {}
                distinct += 1
            node = node[t]
    return sum(len(t) for t in token_lists), distinct
