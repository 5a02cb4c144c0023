"""Importance matrix (imatrix) from a calibration text, for better low-bit quantization.

    python -m build_engine.imatrix --model NAME-F16.gguf --text calibration.txt --out NAME-imatrix.npz

The same statistic llama.cpp's llama-imatrix collects: for every weight matrix W the engine
multiplies, the mean over calibration tokens of x_j^2 for each input column j. It is gathered with
llama.cpp's graph-evaluation callback (cb_eval) on the 16-bit engine, so tensor names are the GGUF's
own, and passed to llama_model_quantize through its `imatrix` parameter. Dense matrices only
(MUL_MAT); mixture-of-experts matrices (MUL_MAT_ID) are skipped and quantized without one.
"""
from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import numpy as np

from build_engine.errors import BuildError
from build_engine.files import partial_path

GGML_TYPE_F32 = 0
MIN_ROWS = 16  # llama-imatrix ignores matmuls over fewer tokens (single-token decode steps)


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor from ggml.h (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, op_params 64 B, name 64 B)."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),  # elements per dimension
    ("nb", ctypes.c_size_t * 4),  # stride in bytes per dimension
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * 10),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def _ggml():
    """libggml-base from the installed llama-cpp-python, with the three functions used here typed."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    if not found:
        raise BuildError(f"libggml-base not found in {lib_dir}; cannot collect an importance matrix")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.POINTER(GGMLTensor)]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.POINTER(GGMLTensor), ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_size_t]
    return lib


def _op_id(lib, name: bytes) -> int:
    """The ggml_op value called ``name`` (MUL_MAT sits early in the enum; stop at the first match)."""
    for op in range(1, 128):
        if lib.ggml_op_name(op) == name:
            return op
    raise BuildError(f"ggml has no op {name.decode()}; unexpected ggml version")


def compute_imatrix(*, model: Path, text: str, n_ctx: int = 512, max_chunks: int = 32,
                    threads: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """({tensor name: mean x^2 per input column (float32)}, tokens seen) over ``text`` with ``model``."""
    import os

    import llama_cpp

    from build_engine import llama_log

    llama_log.install()
    lib = _ggml()
    mul_mat = _op_id(lib, b"MUL_MAT")
    sums: dict[str, np.ndarray] = {}  # name -> sum of x^2 per column (float64)
    counts: dict[str, int] = {}  # name -> activation rows seen

    def collect(t_ptr: int, ask: bool, _user: int) -> bool:
        t = ctypes.cast(t_ptr, ctypes.POINTER(GGMLTensor)).contents
        if t.op != mul_mat:
            return False
        w, x = t.src[0].contents, t.src[1].contents
        name = w.name.decode(errors="replace").split("#")[-1] if b"#" in w.name else w.name.decode(errors="replace")
        if ask:  # the scheduler asks whether we want this node's data
            return x.ne[1] >= MIN_ROWS and x.type == GGML_TYPE_F32 and name.startswith("blk.")
        n_bytes = lib.ggml_nbytes(t.src[1])
        buf = np.empty(n_bytes // 4, dtype=np.float32)
        lib.ggml_backend_tensor_get(t.src[1], buf.ctypes.data, 0, n_bytes)  # host or device memory alike
        assert x.nb[0] == 4 and x.nb[1] == 4 * x.ne[0], f"{name}: non-contiguous activations"
        acts = buf.reshape(-1, x.ne[0]).astype(np.float64)  # (rows, columns)
        if w.ne[2] * w.ne[3] != 1:
            return True  # 3-d weights (stacked experts): not handled here
        sums[name] = sums.get(name, 0.0) + (acts * acts).sum(axis=0)
        counts[name] = counts.get(name, 0) + acts.shape[0]
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(collect)  # kept alive until the end
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mdl = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    if not mdl:
        raise BuildError(f"llama.cpp could not load {model} to collect an importance matrix")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
    cparams.n_threads = cparams.n_threads_batch = threads or os.cpu_count() or 1
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(mdl, cparams)
    try:
        vocab = llama_cpp.llama_model_get_vocab(mdl)
        raw = text.encode()
        toks = (llama_cpp.llama_token * (len(raw) + 16))()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), toks, len(toks), False, False)
        assert n >= n_ctx, f"the calibration text has {n} tokens, fewer than one chunk of n_ctx={n_ctx}"
        n_chunks = min(n // n_ctx, max_chunks)
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        for c in range(n_chunks):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = n_ctx
            for i in range(n_ctx):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = toks[c * n_ctx + i], i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True  # every position, so the last layer's matmuls see all tokens too
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise BuildError(f"llama_decode failed with {rc} while collecting the importance matrix")
        llama_cpp.llama_batch_free(batch)
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(mdl)
    if not sums:
        raise BuildError(f"no weight matrices were seen while running {model}; cannot build an importance matrix")
    return {k: (sums[k] / counts[k]).astype(np.float32) for k in sorted(sums)}, n_chunks * n_ctx


def save(matrix: dict[str, np.ndarray], out: Path) -> Path:
    """Write the matrix as .npz (name -> float32 vector) atomically."""
    tmp = partial_path(out)
    with open(tmp, "wb") as fh:
        np.savez(fh, **matrix)
    tmp.replace(out)
    return out


def load(path: Path) -> dict[str, np.ndarray]:
    """Read a matrix written by save()."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="16-bit GGUF")
    parser.add_argument("--text", type=Path, required=True, help="calibration text file")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    args = parser.parse_args(argv)
    try:
        matrix, n_tokens = compute_imatrix(model=args.model, text=args.text.read_text(), n_ctx=args.ctx,
                                           threads=args.threads)
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{save(matrix, args.out)}: {len(matrix)} tensors from {n_tokens} tokens")


if __name__ == "__main__":
    main()
