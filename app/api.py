"""The HTTP API: parse, validate, call the engine, return JSON. Shapes live in app/schemas.py."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, TypeVar

import pydantic
from flask import Blueprint, Response, current_app, g, jsonify, request

from app import schemas
from app.config import Settings
from app.engine.errors import EngineOverloaded
from app.engine.sampling import SamplingParams
from app.engine.types import Completion, GenerationRequest, GenerationResult
from app.errors import RequestInvalid
from app.http_client import disconnect_probe

bp = Blueprint("api", __name__)
M = TypeVar("M", bound=pydantic.BaseModel)

# Bodies above this size take turns (LARGE_BODY_CONCURRENCY at once): a body costs the worker a
# few times its size while it is parsed, tokenized and answered.
LARGE_BODY_BYTES = 256 * 1024
# How long a large request waits for its turn before it is answered 503 (seconds).
LARGE_BODY_WAIT_S = 60.0


def _engine():
    return current_app.extensions["engine"]


def _settings() -> Settings:
    return current_app.extensions["settings"]


@contextmanager
def _turn_for_large_body() -> Iterator[None]:
    """Hold one of LARGE_BODY_CONCURRENCY turns while a large body is read, used and answered."""
    if (request.content_length or 0) <= LARGE_BODY_BYTES:
        yield
        return
    turns = current_app.extensions["large_bodies"]
    if not turns.acquire(timeout=LARGE_BODY_WAIT_S):
        raise EngineOverloaded(f"too many large requests at once: none finished within {LARGE_BODY_WAIT_S:.0f} s")
    try:
        yield
    finally:
        turns.release()


def _parse(model: type[M]) -> M:
    """Validate the raw body against a declared model (malformed JSON is a 422 too)."""
    try:
        return model.model_validate_json(request.get_data(cache=False) or b"")
    except pydantic.ValidationError as exc:
        raise RequestInvalid.from_pydantic(exc) from None


def _to_generation(body: schemas.ProcessRequest, settings: Settings) -> GenerationRequest:
    """Merge HELM's and the challenge's names, and check the limits this server is configured with."""
    n = body.num_samples
    if body.num_return_sequences is not None:
        if "num_samples" in body.model_fields_set and body.num_samples != body.num_return_sequences:
            raise RequestInvalid.field(
                ["num_return_sequences"],
                f"num_samples={body.num_samples} and num_return_sequences={body.num_return_sequences} disagree",
            )
        n = body.num_return_sequences
    limits = [
        ("num_samples" if body.num_return_sequences is None else "num_return_sequences", n, settings.max_num_samples),
        ("max_new_tokens", body.max_new_tokens, settings.n_ctx),
        ("top_k_per_token", body.top_k_per_token, settings.max_top_k_per_token),
    ]
    for name, value, most in limits:
        if value > most:
            raise RequestInvalid.field([name], f"{name}={value} exceeds this server's limit of {most}", "less_than_equal")
    return GenerationRequest(
        prompt=body.prompt,
        max_new_tokens=body.max_new_tokens,
        num_samples=n,
        sampling=SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p),
        seed=body.seed,
        echo_prompt=body.echo_prompt,
        top_k_per_token=body.top_k_per_token,
        stop_sequences=tuple(body.stop_sequences),
    )


def _completion(c: Completion) -> dict:
    return {
        "text": c.text,
        "tokens": [{"text": t.text, "logprob": t.logprob, "top_logprob": t.top_logprob} for t in c.tokens],
        "logprob": c.logprob,
        "finish_reason": c.finish_reason,
    }


def _account(result: GenerationResult, seconds: float) -> None:
    """Leave the engine's numbers for the access log (flask.g) and the metrics."""
    g.prompt_tokens = result.n_prompt_tokens
    g.new_tokens = result.n_generated_tokens
    g.cached_tokens = result.n_cached_tokens
    g.queue_ms = round(result.queue_s * 1000, 1)
    current_app.extensions["metrics"].request_finished(result, seconds)


@bp.post("/process")
def process():
    """Generate (or score, with echo_prompt) a completion, HELM's way."""
    t0 = time.perf_counter()
    with _turn_for_large_body():
        req = _to_generation(_parse(schemas.ProcessRequest), _settings())
    result = _engine().generate(req, is_disconnected=disconnect_probe(request.environ))
    _account(result, time.perf_counter() - t0)
    completions = [_completion(c) for c in result.completions]
    body = {
        **completions[0],
        "prompt_tokens": result.n_prompt_tokens,
        "cached_tokens": result.n_cached_tokens,
        "completions": completions if len(completions) > 1 else None,
        "request_time": time.perf_counter() - t0,
    }
    return jsonify(body)


@bp.post("/tokenize")
def tokenize():
    """Token ids of a text, as the model sees them (BOS included where the model adds one)."""
    t0 = time.perf_counter()
    with _turn_for_large_body():
        body = _parse(schemas.TokenizeRequest)
        tokens = _engine().tokenize(body.text, truncation=body.truncation, max_length=body.max_length)
        del body  # the text can be megabytes: free it before the answer is built
        g.prompt_tokens = len(tokens)
        return jsonify(tokens=tokens, request_time=time.perf_counter() - t0)


@bp.post("/decode")
def decode():
    """Text of token ids; decode(tokenize(x)) == x."""
    t0 = time.perf_counter()
    with _turn_for_large_body():
        body = _parse(schemas.DecodeRequest)
        return jsonify(text=_engine().decode(body.tokens), request_time=time.perf_counter() - t0)


@bp.get("/health")
def health():
    """200 with the model's facts once it is loaded; 503 while loading or after a failed load."""
    info = _engine().info()
    return jsonify(info), 200 if info["status"] == "ok" else 503


@bp.get("/metrics")
def metrics():
    """Prometheus text format: vLLM's metric names, read from the engine now."""
    from app.metrics import CONTENT_TYPE

    return Response(current_app.extensions["metrics"].render(), content_type=CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi():
    """The API description, made from app/schemas.py with this server's limits (the repository's
    openapi.json is the same document for the default settings)."""
    from app.openapi import document

    return jsonify(document(_settings()))
