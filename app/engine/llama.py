"""The only module that touches llama.cpp: model, context, vocabulary, batches, KV memory."""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from app.config import Settings
from app.engine.errors import EngineError, ModelLoadError

log = logging.getLogger("llama.cpp")

# enum ggml_log_level -> logging levels; 5 (GGML_LOG_LEVEL_CONT) keeps the previous line's level.
_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.INFO


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    _last_level = _LEVELS.get(level, _last_level)
    # llama.cpp is chatty at INFO (every tensor it loads); only warnings and errors reach our log.
    if _last_level >= logging.WARNING:
        log.log(_last_level, text.decode("utf-8", errors="replace").rstrip())


_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the loaded GGUF, for /health and for the scheduler."""

    name: str
    description: str  # llama.cpp's own one-liner, e.g. "llama 256M Q4_1"
    file_type: str  # the quantization, e.g. "Q4_1"
    n_params: int
    size_bytes: int
    n_vocab: int
    n_ctx_train: int
    add_bos: bool
    bos: int
    gpu_offload: bool
    kv_bytes_per_cell: int  # f16 K and V of one token over all layers
    chat_template: str | None  # tokenizer.chat_template, if the GGUF has one
    bos_text: str  # the BOS and EOS tokens' texts ("" if the model has none)
    eos_text: str


class LlamaModel:
    """Owns one llama.cpp model and one context with n_slots sequences, each in its own KV stream.

    kv_unified=false gives every sequence id a stream of N_CTX cells (rounded up to 256) that only
    it uses: attention reads that stream alone, its cells in position order. On a CPU, flash
    attention computes each query row on its own (the same kernel for a one-token step, a group of
    streams and a prompt chunk under 64 rows), except for a lone query row over a KV extent of 512
    or more cells (padded to 256), which it splits across threads: `alone_from` tells the scheduler
    to decode such sequences alone, always. Weight repacking (CPU_REPACK) is off by default: repacked
    matmuls use a 4-row GEMM or a 1-row GEMV depending on a row's place in the step.
    """

    def __init__(self, settings: Settings, *, n_slots: int) -> None:
        path = Path(settings.model_path)
        if not path.is_file():
            raise ModelLoadError(f"MODEL_PATH {path.name} does not exist or is not a file")
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 0x7FFFFFFF
        mparams.use_extra_bufts = settings.cpu_repack
        # Several visible GPUs: how the model is spread over them (no effect on a CPU-only build).
        mparams.split_mode = getattr(llama_cpp, f"LLAMA_SPLIT_MODE_{settings.split_mode.upper()}")
        mparams.main_gpu = settings.main_gpu
        if settings.tensor_split:
            n_max = int(llama_cpp.llama_max_devices())
            if len(settings.tensor_split) > n_max:
                raise ModelLoadError(f"TENSOR_SPLIT has {len(settings.tensor_split)} shares; this llama.cpp takes at most {n_max}")
            # llama.cpp reads llama_max_devices() floats through this pointer: pad with zeros, and keep
            # the array alive on self for as long as the model may look at it.
            self._tensor_split = (ctypes.c_float * n_max)(*settings.tensor_split)
            mparams.tensor_split = self._tensor_split
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path.name} (not a GGUF file, or an unknown architecture)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))

        self.n_slots = n_slots
        self.n_ctx_seq = -(-settings.n_ctx // 256) * 256  # llama.cpp pads each stream to 256 cells
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx_seq * n_slots  # split evenly: one stream of n_ctx_seq cells per slot
        cparams.n_seq_max = n_slots
        cparams.kv_unified = False
        cparams.swa_full = True  # sliding-window layers keep every cell in position order too
        self.n_batch = max(settings.chunk_tokens, n_slots)  # one prompt chunk, or one token per slot
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch  # what we hand llama_decode is what it computes
        cparams.n_threads = settings.threads
        cparams.n_threads_batch = settings.threads
        fa = _flash_attn(settings)
        cparams.flash_attn_type = _FLASH_ATTN[fa]
        # ggml's CPU flash attention takes a split-KV path for a lone query row once the step's KV
        # extent (llama.cpp pads it to 256 cells) reaches 512, i.e. from position 256 on, and a
        # per-row path in a group: from there a sequence always decodes alone. (If llama.cpp moved
        # that threshold below 256, decode_group_limit's probe would see lone != group and say 1.)
        self.alone_from: int | None = 256 if fa == "on" and not _on_gpu(settings) else None
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelLoadError(
                f"llama.cpp could not create {n_slots} KV streams of {self.n_ctx_seq} cells for {path.name} (out of memory?)"
            )
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        # Numpy views over the batch's C arrays: filling them is a slice assignment, not a loop.
        self._tok = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(self.n_batch,))
        self._nseq = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(self.batch.logits, shape=(self.n_batch,))
        self._nseq[:] = 1
        # Piece bytes of every token, for text assembled without a call per token; control and
        # other special tokens render as b"" (HELM never sees "<|endoftext|>" in a text).
        self.pieces: list[bytes] = [self._piece(t) for t in range(self.n_vocab)]
        self.eog = np.array([bool(llama_cpp.llama_vocab_is_eog(self.vocab, t)) for t in range(self.n_vocab)])
        self.info = self._describe(path)

    # ---- vocabulary (read-only: safe from any thread) ----

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # the piece is longer than the buffer: n is minus the size needed
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of `text`, with BOS where the model adds one and add_special is set."""
        data = text.encode("utf-8")
        cap = len(data) + 8  # a token covers at least one byte, plus BOS/EOS
        out = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        if n < 0:
            raise EngineError(f"tokenizer needs {-n} slots for a {len(data)}-byte text")
        return list(out[:n])

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def _describe(self, path: Path) -> ModelInfo:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, buf, len(buf))
        desc = buf.value.decode("utf-8", errors="replace")
        return ModelInfo(
            name=self._meta("general.name") or path.stem,
            description=desc,
            file_type=_file_type_name(self._meta("general.file_type")),
            n_params=int(llama_cpp.llama_model_n_params(self.model)),
            size_bytes=int(llama_cpp.llama_model_size(self.model)),
            n_vocab=self.n_vocab,
            n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(self.model)),
            add_bos=bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)),
            bos=int(llama_cpp.llama_vocab_bos(self.vocab)),
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
            kv_bytes_per_cell=self._kv_bytes_per_cell(),
            chat_template=self._chat_template(),
            bos_text=self._token_text(llama_cpp.llama_vocab_bos(self.vocab)),
            eos_text=self._token_text(llama_cpp.llama_vocab_eos(self.vocab)),
        )

    def _kv_bytes_per_cell(self) -> int:
        m = self.model
        arch = self._meta("general.architecture") or ""
        head_dim = llama_cpp.llama_model_n_embd(m) // max(1, llama_cpp.llama_model_n_head(m))
        k_dim = int(self._meta(f"{arch}.attention.key_length") or head_dim)
        v_dim = int(self._meta(f"{arch}.attention.value_length") or head_dim)
        # (K + V head sizes) x layers x KV heads x 2 bytes (f16)
        return (k_dim + v_dim) * llama_cpp.llama_model_n_layer(m) * llama_cpp.llama_model_n_head_kv(m) * 2

    def _chat_template(self) -> str | None:
        """The GGUF's tokenizer.chat_template (a Jinja template of several KB), None if it has none."""
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def _token_text(self, token: int) -> str:
        """A token's own text, special tokens included ("<|endoftext|>"), "" for no token."""
        if not 0 <= token < self.n_vocab:
            return ""
        text = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def start_token(self) -> int:
        """The token that opens a document: BOS where the model adds it, else end-of-text, else EOS."""
        if self.info.add_bos:
            return self.info.bos
        for fn in (llama_cpp.llama_vocab_eot, llama_cpp.llama_vocab_eos, llama_cpp.llama_vocab_bos):
            t = int(fn(self.vocab))
            if 0 <= t < self.n_vocab:
                return t
        raise EngineError("the model has no BOS, EOT or EOS token to open a document with")

    # ---- compute (scheduler thread only) ----

    def decode_group_limit(self, most: int) -> int:
        """The most sequences (up to `most`, the most that ever decode at once) one decode step may
        carry while every row's logits stay bit-identical to that sequence decoded alone (measured:
        a kernel may change with the step's row count). Uses the first `most` slots with a
        two-token history each, and empties them again."""
        most = min(most, self.n_slots)
        t = self.start_token()
        ones = np.ones(1, dtype=bool)
        for s in range(most):  # a short, different history per slot
            self.decode(np.array([t, 100 + s], np.int32), np.array([0, 1], np.int32), np.full(2, s, np.int32),
                        np.zeros(2, dtype=bool))
        alone = [self.decode(np.array([200 + s], np.int32), np.array([2], np.int32), np.array([s], np.int32), ones)[0].copy()
                 for s in range(most)]
        for s in range(most):
            self.seq_rm(s, 2, -1)
        limit = 1
        for k in range(2, most + 1):
            rows = self.decode(np.arange(200, 200 + k, dtype=np.int32), np.full(k, 2, np.int32),
                               np.arange(k, dtype=np.int32), np.ones(k, dtype=bool))
            same = all(np.array_equal(rows[s], alone[s]) for s in range(k))
            for s in range(k):
                self.seq_rm(s, 2, -1)
            if not same:
                break
            limit = k
        for s in range(most):
            self.seq_rm(s)
        return limit

    def decode(self, tokens: np.ndarray, pos: np.ndarray, seq: np.ndarray, want: np.ndarray) -> np.ndarray:
        """Run one batch; returns logits [n_wanted, n_vocab] (float32) for rows with want=True.

        tokens, pos, seq: int32 [n]; want: bool [n]. Rows come back in batch order. The array is a
        view of llama.cpp's output buffer where possible: valid until the next decode, no copy.
        """
        n = len(tokens)
        assert 0 < n <= self.n_batch, f"batch of {n} tokens, the context takes 1..{self.n_batch}"
        self._tok[:n] = tokens
        self._pos[:n] = pos
        self._out[:n] = want
        for i in range(n):  # seq_id is an array of pointers: no vectorised fill
            self.batch.seq_id[i][0] = int(seq[i])
        self.batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise DecodeFailed(rc)
        rows = np.flatnonzero(want)
        if len(rows) == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        base = ctypes.cast(llama_cpp.llama_get_logits(self.ctx), ctypes.c_void_p).value
        first = ctypes.cast(llama_cpp.llama_get_logits_ith(self.ctx, int(rows[0])), ctypes.c_void_p).value
        all_logits = np.ctypeslib.as_array(
            ctypes.cast(base, ctypes.POINTER(ctypes.c_float)), shape=(len(rows), self.n_vocab)
        )
        if first == base and self._in_order(rows, base):
            return all_logits
        # Outputs were reordered inside llama.cpp: gather row by row through llama_get_logits_ith.
        return np.stack([self._row(int(r)) for r in rows])

    def _in_order(self, rows: np.ndarray, base: int) -> bool:
        stride = 4 * self.n_vocab
        last = ctypes.cast(llama_cpp.llama_get_logits_ith(self.ctx, int(rows[-1])), ctypes.c_void_p).value
        return last == base + stride * (len(rows) - 1)

    def _row(self, i: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Drop positions [p0, p1) of a sequence from the KV cache (-1: open end)."""
        llama_cpp.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def copy_stream(self, src: int, dst: int) -> None:
        """Give dst a copy of src's KV stream, cell for cell (the buffer copy runs at the next
        llama_decode, before anything is written). Trim it with seq_rm afterwards."""
        llama_cpp.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def clear(self) -> None:
        """Empty the whole KV cache."""
        llama_cpp.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        """Free the batch, the context and the model."""
        if getattr(self, "ctx", None):
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None


def _flash_attn(settings: Settings) -> str:
    """FLASH_ATTN=auto: on for a CPU-only build (batch-invariant under the scheduler's rule, see
    LlamaModel), llama.cpp's own choice with a GPU."""
    if settings.flash_attn != "auto":
        return settings.flash_attn
    return "auto" if _on_gpu(settings) else "on"


def _on_gpu(settings: Settings) -> bool:
    """Whether layers run on a GPU: a GPU build with N_GPU_LAYERS != 0."""
    return bool(llama_cpp.llama_supports_gpu_offload()) and settings.n_gpu_layers != 0


def _file_type_name(raw: str | None) -> str:
    """general.file_type (an enum llama_ftype value) as its name: 15 -> "Q4_K_M"."""
    names = {
        getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        for n in dir(llama_cpp)
        if n.startswith("LLAMA_FTYPE_") and n != "LLAMA_FTYPE_GUESSED"
    }
    try:
        return names.get(int(raw), f"ftype {raw}") if raw is not None else "unknown"
    except ValueError:
        return f"ftype {raw}"


class DecodeFailed(EngineError):
    """llama_decode returned non-zero: 1 = no KV slot for the batch, 2 = aborted, <0 = error."""

    def __init__(self, rc: int) -> None:
        super().__init__(f"llama_decode failed with status {rc}")
        self.rc = rc
