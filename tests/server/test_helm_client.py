"""Ring 3: HELM's own client classes (crfm-helm 0.5.16, neurips/local) against the real server."""
import pytest

pytestmark = [pytest.mark.server, pytest.mark.helm, pytest.mark.slow]

# Installed light by scripts/setup.sh --dev (crfm-helm --no-deps + requirements-helm.txt).
from helm.clients.http_model_client import HTTPModelClient
from helm.common.cache import BlackHoleCacheConfig
from helm.common.request import Request
from helm.common.tokenization_request import DecodeRequest, TokenizationRequest
from helm.tokenizers.http_model_tokenizer import HTTPModelTokenizer


@pytest.fixture(scope="module")
def client(server):
    return HTTPModelClient(cache_config=BlackHoleCacheConfig(), base_url=server.url)


@pytest.fixture(scope="module")
def tokenizer(server):
    return HTTPModelTokenizer(cache_config=BlackHoleCacheConfig(), base_url=server.url)


def test_generation_with_a_stop_sequence(client):
    req = Request(model="neurips/local", model_deployment="neurips/local",
                  prompt="Question: What is the capital of France?\nAnswer: The capital of France is",
                  temperature=0.0, max_tokens=20, stop_sequences=["\n"], num_completions=1, top_k_per_token=1)
    result = client.make_request(req)
    assert result.success, result.error
    out = result.completions[0]
    assert out.text and "\n" not in out.text
    assert "".join(t.text for t in out.tokens) == out.text
    assert out.logprob == pytest.approx(sum(t.logprob for t in out.tokens))


def test_scoring_with_echo(client, tokenizer):
    prompt = "The quick brown fox jumps over the lazy dog."
    req = Request(model="neurips/local", model_deployment="neurips/local", prompt=prompt, temperature=0.0,
                  max_tokens=0, echo_prompt=True, top_k_per_token=5)
    result = client.make_request(req)
    assert result.success, result.error
    out = result.completions[0]
    ids = tokenizer.tokenize(TokenizationRequest(text=prompt, tokenizer="neurips/local", truncation=False,
                                                 max_length=2048)).tokens
    assert out.text == prompt and len(out.tokens) == len(ids)
    assert all(t.logprob <= 0 for t in out.tokens)


def test_tokenizer_truncates_and_decodes_back(tokenizer):
    text = "HELM drops in-context examples when a prompt is too long. " * 5
    full = tokenizer.tokenize(TokenizationRequest(text=text, tokenizer="neurips/local", truncation=False, max_length=2048))
    cut = tokenizer.tokenize(TokenizationRequest(text=text, tokenizer="neurips/local", truncation=True, max_length=10))
    assert full.success and cut.success
    ids = [t.value for t in full.tokens]
    assert [t.value for t in cut.tokens] == ids[:10]
    assert tokenizer.decode(DecodeRequest(tokens=ids, tokenizer="neurips/local")).text == text
