"""Ring 3: the real server under gunicorn, spoken to over HTTP exactly as HELM does."""
import concurrent.futures as cf
import json
import time

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.slow]

# What crfm-helm's neurips/local client sends (HELM_CONTRACT.md): these keys and no others.
HELM_GENERATION = {"prompt": "Question: What is the capital of France?\nAnswer: The capital of France is", "temperature": 1e-7,
                   "num_return_sequences": 1, "max_new_tokens": 20, "top_p": 1, "echo_prompt": False,
                   "top_k_per_token": 1, "stop_sequences": ["\n"]}
HELM_SCORING = {"prompt": "The quick brown fox jumps over the lazy dog.", "temperature": 1e-7,
                "num_return_sequences": 1, "max_new_tokens": 0, "top_p": 1, "echo_prompt": True,
                "top_k_per_token": 5, "stop_sequences": []}


def post(server, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=120, **kw)


def test_health_reports_the_model(server):
    info = requests.get(server.url + "/health", timeout=5).json()
    assert info["status"] == "ok" and info["quant"] == "Q4_1" and info["n_ctx"] == 2048


def test_challenge_healthcheck_body(server):
    r = post(server, "/process", {"prompt": "The capital of France is"})
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["text"], str) and body["tokens"] and isinstance(body["request_time"], float)
    assert body["logprob"] == pytest.approx(sum(t["logprob"] for t in body["tokens"]))


def test_helm_generation_is_cut_at_the_stop_sequence(server):
    body = post(server, "/process", HELM_GENERATION).json()
    assert "\n" not in body["text"] and body["text"]
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]


def test_helm_scoring_echoes_every_prompt_token(server):
    body = post(server, "/process", HELM_SCORING).json()
    ids = post(server, "/tokenize", {"text": HELM_SCORING["prompt"], "truncation": False, "max_length": 2048}).json()
    assert body["text"] == HELM_SCORING["prompt"]
    assert len(body["tokens"]) == len(ids["tokens"])
    assert all(t["logprob"] <= 0 and 1 <= len(t["top_logprob"]) <= 5 for t in body["tokens"])


def test_helm_tokenizer_traffic(server):
    text = "Answer the question: what is 2 + 2? " * 10
    full = post(server, "/tokenize", {"text": text, "truncation": False, "max_length": 2048}).json()["tokens"]
    cut = post(server, "/tokenize", {"text": text, "truncation": True, "max_length": 7}).json()["tokens"]
    assert cut == full[:7]
    assert post(server, "/decode", {"tokens": full}).json()["text"] == text


def test_sixteen_concurrent_clients_get_what_they_get_one_at_a_time(deterministic_server):
    reqs = []
    for i in range(16):
        r = dict(HELM_GENERATION if i % 2 else HELM_SCORING)
        r["prompt"] = f"{i} " + r["prompt"]
        reqs.append(r)
    alone = [post(deterministic_server, "/process", r).json() for r in reqs]
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: post(deterministic_server, "/process", r).json(), reqs))
    for a, b in zip(alone, together):
        assert a["text"] == b["text"]
        assert [t["logprob"] for t in a["tokens"]] == [t["logprob"] for t in b["tokens"]]


def test_sixteen_concurrent_clients_on_the_batching_server(server):
    reqs = [dict(HELM_GENERATION, prompt=f"{i} " + HELM_GENERATION["prompt"]) for i in range(16)]
    with cf.ThreadPoolExecutor(16) as pool:
        out = list(pool.map(lambda r: post(server, "/process", r), reqs))
    assert all(r.status_code == 200 and r.json()["text"] for r in out)


BAD = [
    ("/process", b'{"prompt": '),
    ("/process", b"\xff\xfe\x00garbage"),
    ("/process", {"max_new_tokens": 5}),
    ("/process", {"prompt": 42}),
    ("/process", {"prompt": ""}),
    ("/process", {"prompt": "x", "max_new_tokens": -3}),
    ("/process", {"prompt": "x", "max_new_tokens": 10**12}),
    ("/process", {"prompt": "x", "temperature": -1}),
    ("/process", {"prompt": "x", "top_p": 0}),
    ("/process", {"prompt": "x", "top_p": 2}),
    ("/process", {"prompt": "word " * 2000, "max_new_tokens": 100}),
    ("/process", {"prompt": "x" * 70000}),
    ("/tokenize", {"text": 5}),
    ("/decode", {"tokens": [0, 10**9]}),
    ("/decode", {"tokens": [-5]}),
    ("/decode", {"tokens": "abc"}),
]


@pytest.mark.parametrize("path, body", BAD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD)])
def test_bad_input_is_4xx_json_and_the_server_stays_healthy(server, path, body):
    r = post(server, path, body)
    assert 400 <= r.status_code < 500, r.text
    assert "detail" in r.json() or "error" in r.json()
    assert "Traceback" not in r.text
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    assert post(server, "/process", {"prompt": "Still there?", "max_new_tokens": 2}).status_code == 200


def test_context_overflow_names_both_numbers(server):
    r = post(server, "/process", {"prompt": "word " * 2000, "max_new_tokens": 100})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "100" in msg and "2048" in msg


def test_unusual_unicode(server):
    r = post(server, "/process", {"prompt": "Ünïcödé 🤖 日本語 \u200d\u0000", "max_new_tokens": 3, "echo_prompt": True})
    assert r.status_code == 200 and r.json()["text"].startswith("Ünïcödé 🤖 日本語")


def test_disconnected_client_frees_its_sequence(server):
    # A long generation whose client gives up after 0.5 s; the server must carry on serving.
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(server.url + "/process", json={"prompt": "Count:", "max_new_tokens": 1500,
                                                     "temperature": 1e-7}, timeout=0.5)
    # 1500 tokens take ~20 s here; a freed sequence leaves the scheduler within a poll or two.
    deadline = time.monotonic() + 5
    while requests.get(server.url + "/health", timeout=5).json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests.get(server.url + "/health", timeout=5).json()["running"] == 0
    assert post(server, "/process", {"prompt": "Hello", "max_new_tokens": 2}).status_code == 200


def test_openapi_is_served(server):
    doc = requests.get(server.url + "/openapi.json", timeout=5).json()
    assert {"/process", "/tokenize", "/decode", "/health"} <= set(doc["paths"])
