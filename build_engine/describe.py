"""Describe a built engine: the facts llama.cpp itself reads from a GGUF, and the manifest.json.

    python -m build_engine.describe models/NAME/NAME-Q4_K_M.gguf        # print the facts as JSON
"""
from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def gguf_facts(path: Path) -> dict:
    """Parameter count, vocabulary, context length, BOS/EOS, chat template: as the engine loads them."""
    import llama_cpp

    from build_engine import llama_log

    assert path.is_file(), f"GGUF {path} does not exist"
    llama_log.install()  # llama.cpp's load log goes to stderr otherwise
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_mmap = True  # only the header and vocab pages are touched
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp could not load {path}"
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model, desc, ctypes.sizeof(desc))
        template = llama_cpp.llama_model_chat_template(model, None)

        def token(tid: int) -> dict | None:
            if tid < 0:
                return None
            return {"id": tid, "text": llama_cpp.llama_vocab_get_text(vocab, tid).decode(errors="replace")}

        def meta(key: str) -> str | None:
            buf = ctypes.create_string_buffer(512)
            n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, ctypes.sizeof(buf))
            return buf.value.decode(errors="replace") if n >= 0 else None

        return {
            "description": desc.value.decode(),  # e.g. 'llama 135M Q4_K - Medium'
            "architecture": meta("general.architecture"),
            "n_params": llama_cpp.llama_model_n_params(model),
            "tensor_bytes": llama_cpp.llama_model_size(model),
            "n_vocab": llama_cpp.llama_vocab_n_tokens(vocab),
            "n_ctx_train": llama_cpp.llama_model_n_ctx_train(model),
            "bos": token(llama_cpp.llama_vocab_bos(vocab)),
            "eos": token(llama_cpp.llama_vocab_eos(vocab)),
            "chat_template": bool(template),
        }
    finally:
        llama_cpp.llama_model_free(model)


def versions() -> dict:
    """Versions of what built the engine (the engine's own llama.cpp comes from the converter record)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("llama-cpp-python", "huggingface_hub", "transformers", "torch", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def read_manifest(folder: Path) -> dict:
    """models/NAME/manifest.json, or an empty skeleton when there is none (or it is unreadable)."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
        if data.get("manifest_version") == MANIFEST_VERSION:
            return data
    except (OSError, json.JSONDecodeError):
        pass
    return {"manifest_version": MANIFEST_VERSION, "engines": {}, "quality": {}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path, help="a GGUF file")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        raise SystemExit(f"error: {args.gguf} does not exist")
    json.dump(gguf_facts(args.gguf), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
