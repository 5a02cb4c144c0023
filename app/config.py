"""One frozen settings object; the only module that reads the environment."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
# The default model: SmolLM2-135M-Instruct, as described by models/specs/smollm2-135m-instruct.json
# and put in place by `python -m build_engine.default_model` (the README's setup does it).
DEFAULT_MODEL_PATH = ROOT / "models" / "smollm2-135m-instruct" / "smollm2-135m-instruct-Q4_1.gguf"


def _default_threads() -> int:
    # Physical cores are what llama.cpp scales with; os.sched_getaffinity honours taskset/cgroups.
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told, with the environment variable that sets each field."""

    # MODEL_PATH: the GGUF engine to serve.
    model_path: Path = DEFAULT_MODEL_PATH
    # N_CTX: the context window of one request, in tokens (prompt + max_new_tokens must fit). Every
    # KV slot holds this many cells (rounded up to 256).
    n_ctx: int = 4096
    # N_PARALLEL: the most sequences (samples of running requests) decoded together, each in a KV
    # slot of its own; more requests wait in the queue.
    n_parallel: int = 8
    # PREFIX_CACHE_SLOTS: KV slots beyond N_PARALLEL that keep finished prompts for reuse by later
    # ones; -1 means N_PARALLEL. KV memory = (N_PARALLEL + PREFIX_CACHE_SLOTS) x N_CTX cells.
    prefix_cache_slots: int = -1
    # PREFIX_REUSE: whether prompts reuse the KV of prefixes computed before (off: every prompt is
    # computed from scratch; outputs are the same either way).
    prefix_reuse: bool = True
    # CHUNK_TOKENS: the most prompt tokens of one llama_decode. A prompt of 64 tokens or more is
    # computed in batches of 64..CHUNK_TOKENS rows (flash attention's tiled kernel for every row);
    # a reused prefix resumes where it ends (step.resume_point).
    chunk_tokens: int = 128
    # N_BATCH: prompt tokens computed per scheduler step (whole chunks), between decode steps.
    n_batch: int = 512
    # N_THREADS: CPU threads for decoding and prompt processing; 0 means one per available core.
    n_threads: int = 0
    # N_GPU_LAYERS: layers offloaded to the GPU; -1 means all (ignored without a GPU build).
    n_gpu_layers: int = -1
    # FLASH_ATTN: "auto" (on with a CPU-only build, where the scheduler keeps it batch-invariant;
    # llama.cpp's choice with a GPU), "on" or "off" (the plain attention path: slower for short
    # sequences, and its groups need no lone decoding past 256 cells).
    flash_attn: str = "auto"
    # SPLIT_MODE: how a model is spread over several visible GPUs (CUDA_VISIBLE_DEVICES):
    # "none" keeps weights and KV cache on MAIN_GPU; "layer" (llama.cpp's default) gives each GPU
    # whole layers with their KV cache, in TENSOR_SPLIT proportions; "row" splits every weight matrix
    # by rows across the GPUs (tensor parallelism; pays off only with fast links such as NVLink).
    split_mode: str = "layer"
    # TENSOR_SPLIT: the share of the model each GPU gets, comma-separated ("3,1": 3/4 on GPU 0);
    # empty means llama.cpp's default, in proportion to each GPU's free memory.
    tensor_split: tuple[float, ...] = ()
    # MAIN_GPU: the GPU index (among the visible ones) holding the whole model with SPLIT_MODE=none,
    # and the small non-split tensors and intermediate results with SPLIT_MODE=row.
    main_gpu: int = 0
    # CPU_REPACK: let llama.cpp repack Q4_0/Q4_K/IQ4_NL weights for its CPU GEMM kernels: faster
    # prompts on those types, but a 4-row GEMM and a 1-row GEMV round differently, so decode steps
    # are then split into groups of at most 3 sequences to stay batch-invariant.
    cpu_repack: bool = False
    # DETERMINISTIC: the strict fallback: one request at a time, every slot emptied first, no
    # prefix reuse. The default mode is already bit-reproducible on CPU; this also rules out
    # anything the default mode's measurements could have missed (and GPU kernels).
    deterministic: bool = False
    # MAX_NUM_SAMPLES: the largest num_samples / num_return_sequences one request may ask for
    # (at most N_PARALLEL: a request's samples run side by side).
    max_num_samples: int = 8
    # MAX_TOP_K_PER_TOKEN: the largest top_k_per_token one request may ask for.
    max_top_k_per_token: int = 100
    # MAX_BODY_BYTES: request bodies above this size are answered 413 (by the proxy and by the app).
    # 2 MiB is ~500k tokens of text, 250 times HELM's 2048-token window; what one request can cost
    # in the worker (JSON text, token ids as Python ints, the JSON answer) is a few times this.
    max_body_bytes: int = 2 * 1024 * 1024
    # LARGE_BODY_CONCURRENCY: requests with bodies over 256 KiB parsed and served at once; more wait
    # their turn (bounds the worker's memory under many large /tokenize calls).
    large_body_concurrency: int = 2
    # MAX_QUEUED: requests waiting for the scheduler beyond those running; more get 503 with
    # Retry-After. -1 means 4 x N_PARALLEL: a queued request then starts within about four
    # generations' time, and running + queued stays below gunicorn's threads (see http_threads).
    max_queued: int = -1
    # REQUEST_TIMEOUT: seconds a /process request may take from arrival to answer; past it the
    # request is cancelled, its sequences freed, and the answer is 504. 0: no deadline.
    request_timeout: int = 600
    # DRAIN_TIMEOUT: seconds running requests get to finish after SIGTERM (new ones get 503).
    drain_timeout: int = 60
    # API_KEY: when set, every route but /health (and /metrics, see METRICS_REQUIRE_KEY) needs
    # "Authorization: Bearer KEY" or "X-Api-Key: KEY". Off by default: HELM's neurips/local client
    # sends no key. Never shown in a repr or a log.
    api_key: str = field(default="", repr=False)
    # API_KEY_FILE: a file holding the key (first line), e.g. a Docker or Kubernetes secret.
    api_key_file: str = ""
    # METRICS_REQUIRE_KEY: whether GET /metrics needs the API key too (off: scrapers need none).
    metrics_require_key: bool = False
    # LOG_FORMAT: "text" (one readable access-log line per request) or "json" (one JSON object).
    log_format: str = "text"
    # PARSE_SPECIAL: whether "<|im_start|>" and the like in a prompt become special tokens
    # (off: text is text, and decode(tokenize(x)) == x for any x).
    parse_special: bool = False
    # SEED: the seed of requests that send none (-1: a fresh random seed per request).
    default_seed: int = -1
    # MODEL_NAME: the name /health reports; "" means the GGUF's general.name.
    model_name: str = ""
    # LOG_LEVEL: the app's logging level.
    log_level: str = "INFO"

    @property
    def threads(self) -> int:
        """CPU threads to use, resolved from n_threads."""
        return self.n_threads if self.n_threads > 0 else _default_threads()

    @property
    def n_slots(self) -> int:
        """KV slots (one llama.cpp sequence and KV stream each): running ones plus cache ones."""
        extra = self.n_parallel if self.prefix_cache_slots < 0 else self.prefix_cache_slots
        return self.n_parallel + extra

    @property
    def queue_limit(self) -> int:
        """Requests that may wait for the scheduler, resolved from max_queued."""
        return self.max_queued if self.max_queued >= 0 else 4 * self.n_parallel

    @property
    def http_threads(self) -> int:
        """gunicorn's threads: every request that may run or queue, plus 16 for /health, /metrics,
        /tokenize and /decode, so overload is refused by the queue limit, never by a lack of threads."""
        return self.n_parallel + self.queue_limit + 16

    @property
    def kv_cells(self) -> int:
        """Total KV-cache cells: every slot holds N_CTX rounded up to 256."""
        return self.n_slots * (-(-self.n_ctx // 256) * 256)

    @property
    def reuse_prefixes(self) -> bool:
        return self.prefix_reuse and not self.deterministic

    def validate(self) -> "Settings":
        """Fail early, naming the setting, on values that cannot work."""
        assert self.n_ctx >= 16, f"N_CTX must be at least 16, got {self.n_ctx}"
        assert self.n_parallel >= 1, f"N_PARALLEL must be at least 1, got {self.n_parallel}"
        assert self.n_batch >= 8, f"N_BATCH must be at least 8, got {self.n_batch}"
        assert self.prefix_cache_slots >= -1, f"PREFIX_CACHE_SLOTS must be -1 or more, got {self.prefix_cache_slots}"
        assert 128 <= self.chunk_tokens <= 1024 and self.chunk_tokens % 4 == 0, (
            f"CHUNK_TOKENS must be a multiple of 4 in 128..1024, got {self.chunk_tokens}"
        )
        assert self.n_batch >= self.chunk_tokens, f"N_BATCH ({self.n_batch}) must be at least CHUNK_TOKENS ({self.chunk_tokens})"
        assert self.flash_attn in ("auto", "on", "off"), f"FLASH_ATTN must be auto/on/off, got {self.flash_attn!r}"
        assert self.split_mode in SPLIT_MODES, f"SPLIT_MODE must be one of {'/'.join(SPLIT_MODES)}, got {self.split_mode!r}"
        assert self.main_gpu >= 0, f"MAIN_GPU must be a GPU index (0 or more), got {self.main_gpu}"
        if self.tensor_split:
            assert all(x >= 0 for x in self.tensor_split) and sum(self.tensor_split) > 0, (
                f"TENSOR_SPLIT must be non-negative shares with a positive sum, got {self.tensor_split}"
            )
            assert self.main_gpu < len(self.tensor_split), (
                f"MAIN_GPU={self.main_gpu} is not one of the {len(self.tensor_split)} GPUs in TENSOR_SPLIT"
            )
        assert 1 <= self.max_num_samples <= self.n_parallel, (
            f"MAX_NUM_SAMPLES must be 1..N_PARALLEL ({self.n_parallel}), got {self.max_num_samples}"
        )
        assert self.max_body_bytes >= 1024, f"MAX_BODY_BYTES must be at least 1024, got {self.max_body_bytes}"
        assert self.large_body_concurrency >= 1, (
            f"LARGE_BODY_CONCURRENCY must be at least 1, got {self.large_body_concurrency}"
        )
        assert self.max_queued >= -1, f"MAX_QUEUED must be -1 (4 x N_PARALLEL) or at least 0, got {self.max_queued}"
        assert self.request_timeout >= 0, f"REQUEST_TIMEOUT must be 0 (none) or seconds, got {self.request_timeout}"
        assert self.drain_timeout >= 0, f"DRAIN_TIMEOUT must be at least 0 seconds, got {self.drain_timeout}"
        assert self.log_format in ("text", "json"), f"LOG_FORMAT must be text or json, got {self.log_format!r}"
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the environment, then explicit overrides (a test's dict)."""
        environ = os.environ if environ is None else environ
        for var, instead in _REMOVED.items():
            if environ.get(var):
                raise ValueError(f"{var} is no longer a setting: {instead}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = _ENV_NAMES.get(f.name, f.name.upper())
            if var in environ and environ[var] != "":
                values[f.name] = _parse(f.type, environ[var], var)
        values.update(overrides)
        if "model_path" in values:
            values["model_path"] = Path(values["model_path"])
        if "tensor_split" in values:  # a test's list or tuple of shares
            values["tensor_split"] = tuple(float(x) for x in values["tensor_split"])
        if values.get("api_key_file") and not values.get("api_key"):
            values["api_key"] = _read_key(Path(values["api_key_file"]))
        return cls(**values).validate()


# SPLIT_MODE values, in the order of llama.cpp's enum llama_split_mode.
SPLIT_MODES = ("none", "layer", "row")

_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

# Settings of the engine before per-slot KV streams: refused with what replaces them.
_REMOVED = {
    "KV_CACHE_TOKENS": "KV memory is (N_PARALLEL + PREFIX_CACHE_SLOTS) x N_CTX cells; set those",
    "PREFIX_CACHE_TOKENS": "the prefix cache is PREFIX_CACHE_SLOTS slots (0: only idle running slots; "
    "PREFIX_REUSE=0 turns reuse off)",
}

# Fields whose variable is not simply the upper-cased field name.
_ENV_NAMES = {"default_seed": "SEED"}


def _read_key(path: Path) -> str:
    """The API key in a file: its first line, stripped; fails naming the file (never the key)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"API_KEY_FILE={path} cannot be read: {exc.strerror}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"API_KEY_FILE={path} is empty")
    return key


def _parse(annotation: Any, raw: str, var: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            if raw.lower() not in _BOOLS:
                raise ValueError
            return _BOOLS[raw.lower()]
        if kind == "Path":
            return Path(raw)
        if kind == "tuple[float, ...]":  # "3,1" or "0.75, 0.25"; nan and inf are no shares
            values = tuple(float(x) for x in raw.split(","))
            if not all(math.isfinite(x) for x in values):
                raise ValueError
            return values
        return raw
    except ValueError:
        what = "comma-separated list of numbers" if kind.startswith("tuple") else kind
        raise ValueError(f"{var}={raw!r} is not a valid {what}") from None
