"""Ring 3: lm-evaluation-harness's local-completions against the server under gunicorn.

Two tasks made here (tests/server/lm_eval_tasks/: YAML over local JSON Lines, no hub): a
multiple-choice loglikelihood task and a generate_until task. lm-eval runs them with its remote
tokenizer (our /tokenizer_info, /tokenize, /detokenize), once with token-id prompts in batches of 8
and once with string prompts. Every item's score, greedy flag and accuracy must equal what our own
/process gives for the same text, computed here without lm-eval. The server is DETERMINISTIC, so
"equal" is exact: the batched /v1 path and /process run the same computation.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "server" / "lm_eval_tasks"


def post(server, path, body):
    r = requests.post(server.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.jsonl").read_text().splitlines()]


def run_lm_eval(server, out: Path, *, tokenized: bool) -> tuple[dict, dict[str, list[dict]]]:
    """lm_eval's own command line, as the README gives it; returns (results, samples by task)."""
    model_id = requests.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    args = (f"base_url={server.url}/v1/completions,model={model_id},tokenizer_backend=remote,"
            f"tokenized_requests={tokenized}")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "local-completions", "--model_args", args,
           "--tasks", "capitals_mc,arith_gen", "--include_path", str(TASKS), "--batch_size", "8",
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = out.rglob("results_*.json")
    samples = {t: [json.loads(x) for x in next(out.rglob(f"samples_{t}_*.jsonl")).read_text().splitlines()]
               for t in ("capitals_mc", "arith_gen")}
    return json.loads(results_file.read_text())["results"], samples


def direct_mc(server, doc) -> list[tuple[float, bool]]:
    """Each choice's (loglikelihood, greedy) from /process echo scores, split where lm-eval splits:
    the context's own tokens, then the continuation's."""
    context = f"Question: What is the capital of {doc['country']}?\nAnswer:"
    n_ctx = len(post(server, "/tokenize", {"text": context, "truncation": False})["tokens"])
    out = []
    for choice in doc["choices"]:
        text = context + " " + choice
        body = post(server, "/process", {"prompt": text, "max_new_tokens": 0, "echo_prompt": True,
                                         "temperature": 1e-7, "top_k_per_token": 1})
        cont = body["tokens"][n_ctx:]
        assert cont and "".join(t["text"] for t in body["tokens"][:n_ctx]) == context
        greedy = all(t["logprob"] == max(t["top_logprob"].values()) for t in cont)
        out.append((sum(t["logprob"] for t in cont), greedy))
    return out


def direct_gen(server, doc) -> str:
    body = post(server, "/process", {"prompt": f"Question: {doc['question']}\nAnswer:", "max_new_tokens": 8,
                                     "temperature": 1e-7, "stop_sequences": ["\n"]})
    return body["text"]


@pytest.fixture(scope="module")
def direct(deterministic_server):
    """What /process says about every item, computed once."""
    mc = [direct_mc(deterministic_server, d) for d in docs("capitals_mc")]
    gen = [direct_gen(deterministic_server, d) for d in docs("arith_gen")]
    return mc, gen


@pytest.mark.parametrize("tokenized", [True, False], ids=["token-ids", "strings"])
def test_lm_eval_accuracy_equals_process_scores_item_by_item(deterministic_server, direct, tmp_path, tokenized):
    results, samples = run_lm_eval(deterministic_server, tmp_path, tokenized=tokenized)
    mc, gen = direct
    mc_docs, gen_docs = docs("capitals_mc"), docs("arith_gen")

    by_id = {s["doc_id"]: s for s in samples["capitals_mc"]}
    assert sorted(by_id) == list(range(len(mc_docs)))
    accs = []
    for i, doc in enumerate(mc_docs):
        theirs = [(float(ll), greedy == "True") for ll, greedy in by_id[i]["filtered_resps"]]
        assert theirs == mc[i], (doc, theirs, mc[i])  # every choice's score and greedy flag, exactly
        lls = [ll for ll, _ in mc[i]]
        acc = float(lls.index(max(lls)) == doc["answer"])
        assert by_id[i]["acc"] == acc, doc
        accs.append(acc)
    assert results["capitals_mc"]["acc,none"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)

    by_id = {s["doc_id"]: s for s in samples["arith_gen"]}
    matches = []
    for i, doc in enumerate(gen_docs):
        assert by_id[i]["resps"][0][0] == gen[i], doc  # the same greedy text
        match = float(gen[i].strip() == doc["answer"])
        assert by_id[i]["exact_match"] == match, doc
        matches.append(match)
    assert results["arith_gen"]["exact_match,strip"] == pytest.approx(sum(matches) / len(matches), abs=1e-12)
    print(f"\nlm-eval ({'token ids' if tokenized else 'strings'}): capitals_mc acc "
          f"{results['capitals_mc']['acc,none']:.4f}, direct {sum(accs) / len(accs):.4f}; arith_gen exact_match "
          f"{results['arith_gen']['exact_match,strip']:.4f}, direct {sum(matches) / len(matches):.4f}")
