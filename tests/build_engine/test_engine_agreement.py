"""The converted f16 engine, served by the real engine, agrees with transformers on the same weights.

The checkpoint is bf16; bf16 -> f16 is exact for these weights (all within f16's normal range), so the
GGUF holds the very numbers transformers multiplies. What differs is arithmetic: transformers runs
float32 throughout, while llama.cpp's CPU matmul on f16 weights rounds each activation row to f16
(unit roundoff 2^-11 ~ 4.9e-4) and sums in another order. Measured on 255 prompt tokens
of SmolLM2-135M (30 layers): mean |d logprob| ~ 1.3e-3 nats, max ~ 8e-3. The asserted bounds (mean
< 5e-3, max < 3e-2) leave ~4x headroom for other CPUs' SIMD paths and stay far below what a real
conversion fault produces (a wrong RoPE layout, norm epsilon or tied embedding moves logprobs by
0.1-10 nats; even the bf16 engine, which rounds activations to bf16, reaches mean 1e-2, max 5e-2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.build, pytest.mark.slow]
MEAN_BOUND, MAX_BOUND = 5e-3, 3e-2  # nats per token; see the module docstring
N_GREEDY = 24  # generated tokens compared one by one


@pytest.fixture(scope="module")
def reference(hf_checkpoint: Path):
    """transformers on the checkpoint, computing in float32: (tokenizer, model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(hf_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def served(built: tuple[Path, dict]):
    """The real serving engine (app.engine) on the converted F16 GGUF."""
    from app.config import Settings
    from app.engine import Engine

    settings = Settings.from_env({}, model_path=built[0] / "smol-F16.gguf", n_threads=2, n_ctx=2048, n_parallel=8)
    engine = Engine(settings).start(background=False)
    yield engine
    engine.close()


def test_f16_prompt_logprobs_agree_with_transformers(reference, served) -> None:
    import torch
    from app.engine import GenerationRequest
    from app.engine.sampling import SamplingParams
    from build_engine.evaluate import DEFAULT_TEXT

    tok, model = reference
    text = DEFAULT_TEXT.read_text()[:1200]
    ids = served.tokenize(text)
    assert ids == tok(text)["input_ids"], "the GGUF's tokenizer splits the text as the checkpoint's does"
    result = served.generate(GenerationRequest(prompt=text, max_new_tokens=1, echo_prompt=True,
                                               sampling=SamplingParams(temperature=1e-7)))
    echoed = np.array([t.logprob for t in result.completions[0].tokens[: len(ids)]])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    diff = np.abs(echoed[1:] - expected)  # token 0 has no prefix to condition on in transformers
    print(f"f16 engine vs transformers, {len(diff)} tokens: mean |d logprob| {diff.mean():.2e}, max {diff.max():.2e}")
    assert diff.mean() < MEAN_BOUND and diff.max() < MAX_BOUND, (diff.mean(), diff.max())


def test_f16_greedy_continuation_matches_transformers(reference, served) -> None:
    import torch
    from app.engine import GenerationRequest
    from app.engine.sampling import SamplingParams

    tok, model = reference
    prompt = "The old lighthouse keeper climbed the stairs every evening, and"
    ids = served.tokenize(prompt)
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=N_GREEDY, do_sample=False,
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
    got = served.generate(GenerationRequest(prompt=prompt, max_new_tokens=N_GREEDY,
                                            sampling=SamplingParams(temperature=1e-7)))
    assert got.completions[0].text == tok.decode(want, skip_special_tokens=True)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_engines_serve(built: tuple[Path, dict], quant: str) -> None:
    from app.config import Settings
    from app.engine import Engine, GenerationRequest
    from app.engine.sampling import SamplingParams

    settings = Settings.from_env({}, model_path=built[0] / f"smol-{quant}.gguf", n_threads=2, n_ctx=2048, n_parallel=8)
    engine = Engine(settings).start(background=False)
    try:
        out = engine.generate(GenerationRequest(prompt="The capital of France is", max_new_tokens=8,
                                                sampling=SamplingParams(temperature=1e-7)))
        assert out.completions[0].text.strip(), "a quantized engine produces text"
        assert engine.info()["n_params"] == 134_515_008
    finally:
        engine.close()
