"""Checks on a Hugging Face checkpoint folder before conversion, each naming the bad file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from build_engine.errors import BuildError

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "consolidated*.pth")
TORCH_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}  # config 'dtype' -> converter outtype


def weight_files(folder: Path) -> list[Path]:
    """The weight shards of a checkpoint, safetensors preferred (what the converter reads)."""
    for pattern in WEIGHT_GLOBS:
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def load_config(folder: Path) -> dict:
    """config.json of a checkpoint folder; fail naming the folder or the file."""
    if not folder.is_dir():
        raise BuildError(f"checkpoint folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise BuildError(f"{folder} has no config.json; is it a Hugging Face checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BuildError(f"{path} is not valid JSON: {err}") from None


def check_safetensors(path: Path) -> int:
    """Validate a safetensors file's header against its size; return its tensor bytes."""
    size = path.stat().st_size  # bytes
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BuildError(f"{path} is corrupt: {size} bytes, too short for a safetensors header")
        (n_header,) = struct.unpack("<Q", head)  # little-endian u64: JSON header length in bytes
        if n_header > min(size - 8, 100 << 20):
            raise BuildError(f"{path} is corrupt: header length {n_header} does not fit in {size} bytes")
        try:
            header = json.loads(fh.read(n_header))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BuildError(f"{path} is corrupt: its header is not JSON") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n_header + end != size:
        raise BuildError(
            f"{path} is corrupt or truncated: its header describes {8 + n_header + end} bytes, the file has {size}"
        )
    return end


def check_checkpoint(folder: Path, *, supported: list[str]) -> dict:
    """Validate a checkpoint folder for conversion; return facts about it (architecture, dtype, bytes)."""
    config = load_config(folder)
    arches = config.get("architectures") or []
    if not arches:
        raise BuildError(f"{folder}/config.json has no 'architectures' entry; the converter cannot pick a model class")
    if arches[0] not in supported:
        raise BuildError(
            f"architecture {arches[0]!r} of {folder} is not known to the vendored llama.cpp converter "
            f"({len(supported)} architectures supported, e.g. LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
        )
    weights = weight_files(folder)
    if not weights:
        raise BuildError(f"{folder} holds no weights (*.safetensors or pytorch_model*.bin)")
    tensor_bytes = sum(check_safetensors(w) if w.suffix == ".safetensors" else w.stat().st_size for w in weights)
    tokenizer = [n for n in ("tokenizer.json", "tokenizer.model") if (folder / n).is_file()]
    if not tokenizer:
        raise BuildError(f"{folder} has no tokenizer.json or tokenizer.model; the GGUF needs the vocabulary")
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return {"architecture": arches[0], "dtype": dtype, "tensor_bytes": tensor_bytes,
            "weights": [w.name for w in weights]}
