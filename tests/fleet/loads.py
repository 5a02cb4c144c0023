"""Loads for the fleet tests, shaped like what HELM sends (its neurips/local client's keys, in its
order: the body begins with the prompt, which is what the proxy hashes)."""
from __future__ import annotations

import random

SUBJECTS = ("anatomy", "astronomy", "econometrics", "philosophy", "virology", "world religions",
            "high school chemistry", "college mathematics")

# Words per subject and sentence templates: varied sentences, so the 5-shot prefixes tokenize like
# prose (about 600 tokens), not like one word repeated.
_WORDS = {
    "anatomy": ("femur", "ligament", "cortex", "artery", "vertebra", "tendon", "retina", "nerve"),
    "astronomy": ("pulsar", "nebula", "quasar", "orbit", "comet", "galaxy", "redshift", "eclipse"),
    "econometrics": ("regression", "estimator", "residual", "variance", "instrument", "panel", "lag", "bias"),
    "philosophy": ("virtue", "argument", "premise", "duty", "mind", "knowledge", "freedom", "justice"),
    "virology": ("capsid", "genome", "vaccine", "host", "strain", "antibody", "envelope", "receptor"),
    "world religions": ("scripture", "ritual", "pilgrimage", "temple", "prophet", "festival", "monk", "creed"),
    "high school chemistry": ("molecule", "isotope", "catalyst", "solvent", "ion", "bond", "acid", "enzyme"),
    "college mathematics": ("matrix", "integral", "group", "series", "limit", "vector", "prime", "kernel"),
}
_ADJ = ("small", "rapid", "unusual", "stable", "complex", "early", "distant", "central", "weak", "dense")
_VERB = ("changes", "grows", "appears", "declines", "persists", "varies", "returns", "collapses")
_TEMPLATES = (
    "A student observed that the {a} {w1} {v} whenever the {w2} is {b}.",
    "Which statement best explains why a {w1} {v} near a {a} {w2}?",
    "In the third experiment, the {w1} was measured twice and the {w2} once.",
    "Suppose the {w1} and the {w2} are both {a}; what follows about the {w3}?",
    "Most textbooks describe the {w1} as {a}, although recent work on the {w2} disagrees.",
    "If the {w1} {v}, the {b} {w2} must also be considered.",
)


def _sentence(rnd: random.Random, words: tuple[str, ...]) -> str:
    w1, w2, w3 = rnd.sample(words, 3)
    return rnd.choice(_TEMPLATES).format(w1=w1, w2=w2, w3=w3, a=rnd.choice(_ADJ), b=rnd.choice(_ADJ),
                                         v=rnd.choice(_VERB))


def _question(rnd: random.Random, words: tuple[str, ...], n_sentences: int) -> str:
    stem = " ".join(_sentence(rnd, words) for _ in range(n_sentences))
    options = "".join(f"\n{c}. the {rnd.choice(_ADJ)} {rnd.choice(words)} {rnd.choice(_VERB)}" for c in "ABCD")
    return f"Question: {stem}{options}\nAnswer:"


def mmlu_prompts(per_subject: int, *, seed: int = 0, subjects: tuple[str, ...] = SUBJECTS) -> list[tuple[str, str]]:
    """(subject, prompt): per subject one 5-shot prefix (~600 tokens) and `per_subject` questions
    after it, interleaved across subjects (several HELM runs sharing a fleet)."""
    rnd = random.Random(seed)
    out = []
    for subject in subjects:
        words = _WORDS[subject]
        shots = "".join(f"{_question(rnd, words, 4)} {rnd.choice('ABCD')}\n\n" for _ in range(5))
        head = f"The following are multiple choice questions (with answers) about {subject}.\n\n{shots}"
        out += [(subject, head + _question(rnd, words, 2)) for _ in range(per_subject)]
    rnd.shuffle(out)
    return out


def helm_body(prompt: str, *, max_new_tokens: int, echo: bool = False, stop: tuple[str, ...] = ("\n",)) -> dict:
    """A greedy request as HELM's client writes it (temperature 0 becomes 1e-7)."""
    return {"prompt": prompt, "temperature": 1e-7, "num_return_sequences": 1, "max_new_tokens": max_new_tokens,
            "top_p": 1, "echo_prompt": echo, "top_k_per_token": 5, "stop_sequences": list(stop) if not echo else []}


def helm_requests(n_scenarios: int, per_scenario: int, *, seed: int = 1) -> list[dict]:
    """Generation (12 tokens, stop at a newline) and, every third, scoring (echo, 0 new tokens)
    requests of ~120 tokens; each scenario's prompts share a 1-shot prefix, as HELM's in-context
    examples do."""
    rnd = random.Random(seed)
    out = []
    for s in range(n_scenarios):
        words = _WORDS[SUBJECTS[s % len(SUBJECTS)]]
        head = f"Scenario {s}: answer briefly.\n\n{_question(rnd, words, 2)} {rnd.choice('ABCD')}\n\n"
        for i in range(per_scenario):
            prompt = head + _question(rnd, words, 1)
            k = s * per_scenario + i
            out.append(helm_body(prompt, max_new_tokens=0, echo=True) if k % 3 == 2 else helm_body(prompt, max_new_tokens=12))
    rnd.shuffle(out)
    return out
