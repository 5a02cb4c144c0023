"""Ring 3: HELM's own VLLMClient (crfm-helm 0.5.16, OpenAI legacy completions) pointed at our /v1/.

Its results must be what HELM's neurips/local client gets from /process for the same request. The
server is DETERMINISTIC, so they are compared exactly. One difference is OpenAI's and vLLM's: an
echoed prompt's first token has a null logprob, which HELM reads as 0.
"""
import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.helm, pytest.mark.slow]

# Installed light by scripts/setup.sh --dev (crfm-helm --no-deps + requirements-helm.txt, openai SDK).
from helm.clients.openai_client import OpenAILegacyCompletionsClient
from helm.clients.vllm_client import VLLMClient
from helm.common.cache import BlackHoleCacheConfig
from helm.common.request import Request
from helm.tokenizers.http_model_tokenizer import HTTPModelTokenizer

DEPLOYMENT = "vllm/smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(deterministic_server):
    url = deterministic_server.url
    model = requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    tokenizer = HTTPModelTokenizer(cache_config=BlackHoleCacheConfig(), base_url=url)
    args = dict(cache_config=BlackHoleCacheConfig(), base_url=url + "/v1/")
    try:
        return VLLMClient(tokenizer=tokenizer, tokenizer_name="neurips/local", vllm_model_name=model, **args)
    except TypeError as exc:
        # crfm-helm 0.5.16: VLLMClient.__init__ hands tokenizer and tokenizer_name on to openai.OpenAI(),
        # which refuses them. Build it as that constructor means to: OpenAIClient's own __init__ with
        # VLLMClient's arguments, then its two attributes. Every request goes through HELM's own code.
        assert "tokenizer" in str(exc), exc
        client = VLLMClient.__new__(VLLMClient)
        OpenAILegacyCompletionsClient.__init__(client, api_key="EMPTY", org_id=None, openai_model_name=model, **args)
        client.tokenizer, client.tokenizer_name = tokenizer, "neurips/local"
        return client


def process(server, **body):
    r = requests.post(server.url + "/process", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("prompt, stops", [
    ("Question: What is the capital of France?\nAnswer: The capital of France is", ["\n"]),
    ("Once upon a time, in a small village,", ["."]),
])
def test_generation_equals_process(client, deterministic_server, prompt, stops):
    req = Request(model=DEPLOYMENT, model_deployment=DEPLOYMENT, prompt=prompt, temperature=0.0, max_tokens=20,
                  stop_sequences=stops, num_completions=1, top_k_per_token=1)
    result = client.make_request(req)
    assert result.success, result.error
    out = result.completions[0]
    # What HELM's neurips/local client sends for the same request (its greedy is temperature 1e-7).
    ref = process(deterministic_server, prompt=prompt, temperature=1e-7, num_return_sequences=1, max_new_tokens=20,
                  top_p=1, echo_prompt=False, top_k_per_token=1, stop_sequences=stops)
    assert out.text == ref["text"] and out.text
    theirs = [(t.text, t.logprob) for t in out.tokens]
    ours = [(t["text"], t["logprob"]) for t in ref["tokens"]]
    if ref["finish_reason"] == "eos":  # OpenAI and vLLM return the end-of-text token, text ""
        assert theirs[-1][0] == "" and theirs[:-1] == ours
    else:
        assert theirs == ours
        assert out.logprob == pytest.approx(ref["logprob"], rel=1e-12, abs=1e-12)


def test_echo_scoring_equals_process(client, deterministic_server):
    prompt = "The quick brown fox jumps over the lazy dog."
    req = Request(model=DEPLOYMENT, model_deployment=DEPLOYMENT, prompt=prompt, temperature=0.0, max_tokens=0,
                  echo_prompt=True, top_k_per_token=1)
    result = client.make_request(req)
    assert result.success, result.error
    out = result.completions[0]
    ref = process(deterministic_server, prompt=prompt, temperature=1e-7, num_return_sequences=1, max_new_tokens=0,
                  top_p=1, echo_prompt=True, top_k_per_token=1, stop_sequences=[])
    assert out.text == ref["text"] == prompt
    assert [t.text for t in out.tokens] == [t["text"] for t in ref["tokens"]]
    assert out.tokens[0].logprob == 0  # null: nothing precedes the prompt's first token
    assert [t.logprob for t in out.tokens[1:]] == [t["logprob"] for t in ref["tokens"][1:]]
    assert out.logprob == pytest.approx(ref["logprob"] - ref["tokens"][0]["logprob"], rel=1e-12)
