"""Convert a Hugging Face checkpoint folder to a 16-bit GGUF with llama.cpp's own converter.

    python -m build_engine.convert --checkpoint DIR --out models/NAME/NAME-F16.gguf [--outtype f16|bf16]

The converter runs as a subprocess with the vendored gguf-py first on PYTHONPATH (not the PyPI
gguf), and writes to a temporary name that is renamed only when it has finished.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from build_engine.checkpoint import TORCH_DTYPES, check_checkpoint
from build_engine.errors import BuildError
from build_engine.files import ensure_free_space, partial_path
from build_engine.vendor import DEFAULT_CACHE, Converter, ensure_converter

OUTTYPES = ("f16", "bf16")


def default_outtype(dtype: str) -> str:
    """The checkpoint's own 16-bit type (bf16 stays bf16); f32 and others become f16."""
    return TORCH_DTYPES[dtype] if TORCH_DTYPES.get(dtype) in OUTTYPES else "f16"


def convert(*, checkpoint: Path, out: Path, outtype: str | None = None, converter: Converter | None = None,
            log: Path | None = None, verbose: bool = False) -> Path:
    """Run convert_hf_to_gguf.py on ``checkpoint``; write ``out`` atomically; return it.

    The converter's output goes to ``log`` (default: beside ``out``), and to stderr too when verbose.
    """
    converter = converter or ensure_converter(cache=DEFAULT_CACHE)
    facts = check_checkpoint(checkpoint, supported=converter.supported_architectures())
    outtype = outtype or default_outtype(facts["dtype"])
    assert outtype in OUTTYPES, f"outtype {outtype!r} is not one of {OUTTYPES}"
    # 16-bit output: half the f32 bytes, the same as 16-bit input bytes; 5% slack for metadata.
    scale = 0.5 if facts["dtype"] == "float32" else 1.0
    ensure_free_space(folder=out.parent, need_bytes=int(facts["tensor_bytes"] * scale * 1.05), what=out.name)
    tmp = partial_path(out)
    tmp.unlink(missing_ok=True)
    env = dict(os.environ)
    # The vendored gguf-py must shadow any PyPI gguf: the converter and the loader must agree.
    env["PYTHONPATH"] = os.pathsep.join([str(converter.root / "gguf-py"), str(converter.root)])
    cmd = [sys.executable, str(converter.script), str(checkpoint), "--outfile", str(tmp), "--outtype", outtype]
    log = log or out.with_suffix(".convert.log")
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    with open(log, "wb") as fh, subprocess.Popen(cmd, env=env, **pipe) as proc:
        for line in proc.stdout:  # tee: the log file always, the terminal when asked
            fh.write(line)
            if verbose:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
        returncode = proc.wait()
    if returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)  # never leave a half-written GGUF behind
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        if "No space left on device" in tail:
            raise BuildError(f"disk full while writing {out}: free space in {out.parent} and run again")
        raise BuildError(f"converting {checkpoint} failed (exit {returncode}); full log {log}:\n{tail}")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="output GGUF path")
    parser.add_argument("--outtype", choices=OUTTYPES, help="16-bit type (default: the checkpoint's own dtype)")
    parser.add_argument("--verbose", action="store_true", help="show the converter's output as it runs")
    args = parser.parse_args(argv)
    try:
        print(convert(checkpoint=args.checkpoint, out=args.out, outtype=args.outtype, verbose=args.verbose))
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
