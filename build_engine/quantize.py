"""Quantize a 16-bit GGUF to any llama.cpp file type, through llama-cpp-python's quantize API.

    python -m build_engine.quantize --src NAME-F16.gguf --out NAME-Q4_K_M.gguf --type Q4_K_M [--threads N]
"""
from __future__ import annotations

import argparse
import ctypes
import os
from pathlib import Path

from build_engine.errors import BuildError
from build_engine.files import ensure_free_space, partial_path


def file_types() -> dict[str, int]:
    """Every llama.cpp file type by name ('Q4_K_M' -> LLAMA_FTYPE_MOSTLY_Q4_K_M), from the engine's own constants."""
    import llama_cpp

    types = {}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr.removeprefix("LLAMA_FTYPE_MOSTLY_")] = getattr(llama_cpp, attr)
    types["F32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    return dict(sorted(types.items(), key=lambda kv: kv[1]))


# Approximate bits per weight of each type, for the disk-space check before writing (llama.cpp's
# own table in tools/quantize; unknown types are sized as 16 bits, which errs on the safe side).
BITS_PER_WEIGHT = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
                   "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.5, "Q4_1": 5.0,
                   "IQ4_XS": 4.25, "IQ4_NL": 4.5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 3.0}
# Types llama.cpp refuses to make without an importance matrix (tools/quantize/quantize.cpp).
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"}


def parse_quant_list(text: str) -> list[str]:
    """'q4_k_m, Q8_0' -> ['Q4_K_M', 'Q8_0']; an unknown name fails listing the valid ones."""
    known = file_types()
    names = [t.strip().upper() for t in text.split(",") if t.strip()]
    if not names:
        raise BuildError(f"no quantization type given; valid types: {', '.join(known)}")
    bad = [n for n in names if n not in known]
    if bad:
        raise BuildError(f"unknown quantization type {', '.join(bad)}; valid types: {', '.join(known)}")
    return list(dict.fromkeys(names))  # order kept, duplicates dropped


def quantize(*, src: Path, out: Path, qtype: str, threads: int = 0, imatrix: dict[str, object] | None = None,
             verbose: bool = False) -> Path:
    """Quantize ``src`` to ``qtype`` into ``out`` (atomically); ``imatrix`` maps tensor name -> float32 array."""
    import llama_cpp
    import numpy as np

    from build_engine import llama_log

    llama_log.install(verbose=verbose)  # llama.cpp logs one line per tensor otherwise

    types = file_types()
    if qtype not in types:
        raise BuildError(f"unknown quantization type {qtype}; valid types: {', '.join(types)}")
    if qtype in NEEDS_IMATRIX and not imatrix:
        raise BuildError(f"{qtype} needs an importance matrix: pass --imatrix-text CALIBRATION.txt")
    if not src.is_file():
        raise BuildError(f"quantize input {src} does not exist")
    n_params = src.stat().st_size / 2  # a 16-bit source holds ~2 bytes per weight
    need = int(n_params * BITS_PER_WEIGHT.get(qtype, 16) / 8 * 1.05)
    ensure_free_space(folder=out.parent, need_bytes=need, what=out.name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[qtype]
    params.nthread = threads  # <= 0: all hardware threads
    keep = []  # keeps the ctypes buffers alive until the call returns
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-name terminated
        for slot, (name, values) in zip(entries, imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep += [arr, name.encode()]
            slot.name, slot.size = keep[-1], arr.size
            slot.data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = entries
    tmp = partial_path(out)
    tmp.unlink(missing_ok=True)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)  # never leave a half-written GGUF behind
        raise BuildError(
            f"llama_model_quantize({src.name} -> {qtype}) failed with code {rc}; run with --verbose for llama.cpp's log"
        )
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, help="16-bit GGUF (from build_engine.convert)")
    parser.add_argument("--out", type=Path, help="output GGUF path")
    parser.add_argument("--type", required=True, help="llama.cpp file type, e.g. Q4_K_M; 'list' prints them all")
    parser.add_argument("--threads", type=int, default=0, help="quantization threads (0: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's per-tensor log")
    args = parser.parse_args(argv)
    if args.type == "list":
        print("\n".join(file_types()))
        return
    if args.src is None or args.out is None:
        parser.error("--src and --out are required")
    try:
        print(quantize(src=args.src, out=args.out, qtype=parse_quant_list(args.type)[0], threads=args.threads,
                       verbose=args.verbose))
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
