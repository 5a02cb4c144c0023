"""Build llama.cpp engines from a Hugging Face checkpoint: fetch, convert, quantize, describe, evaluate.

    python -m build_engine --model SOURCE [--revision REV] --quant Q4_K_M[,Q8_0,...] --out models/NAME

SOURCE is a spec name from models/specs/ (e.g. mistral-7b), a hub id (owner/name) or a local
checkpoint folder. Outputs: models/NAME/NAME-<QUANT>.gguf, models/NAME/manifest.json and, with
--eval, a quality table and models/NAME/NAME-quality.png. Finished steps are reused when their
inputs have the same sha256, so adding a quant level costs only that level.
"""
from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from build_engine import chart, describe, evaluate, fetch, imatrix, quantize, requirements, specs, vendor
from build_engine.checkpoint import check_checkpoint, weight_files
from build_engine.convert import OUTTYPES, convert, default_outtype
from build_engine.errors import BuildError
from build_engine.files import gib, sha256_file, write_json_atomic

DEFAULT_QUANT = "Q4_K_M"
NO_IMATRIX = {"F32", "F16", "BF16", "Q8_0"}  # types an importance matrix does not change


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays for the table)."""
    print(f"[build_engine] {msg}", file=sys.stderr, flush=True)


def now() -> str:
    """UTC time, ISO 8601, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def input_files(folder: Path) -> list[Path]:
    """The checkpoint files conversion reads: metadata and tokenizer files plus the weight shards."""
    meta = [p for p in sorted(folder.iterdir()) if p.is_file() and any(fnmatch.fnmatch(p.name, pat)
                                                                       for pat in fetch.META_PATTERNS)]
    index = [p for p in folder.glob("*.index.json")]
    return meta + sorted(index) + weight_files(folder)


def digest(hashes: dict[str, str]) -> str:
    """One sha256 over a {file name: sha256} map, independent of order."""
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()


def _reusable(path: Path, record: dict | None, **expect: object) -> bool:
    """True when ``path`` exists, hashes to its record, and the record's inputs match ``expect``."""
    if not record or not path.is_file() or any(record.get(k) != v for k, v in expect.items()):
        return False
    return sha256_file(path) == record.get("sha256")


def build(*, model: str, quants: list[str], out: Path | None = None, revision: str | None = None,
          outtype: str | None = None, run_eval: bool = True, keep_intermediate: bool = True, threads: int = 0,
          eval_text: Path = evaluate.DEFAULT_TEXT, eval_ctx: int = 512, eval_chunks: int = 8,
          token_file: Path | None = fetch.DEFAULT_TOKEN_FILE, hub_cache: Path | None = None,
          converter_cache: Path = vendor.DEFAULT_CACHE, specs_dir: Path = specs.SPECS_DIR,
          imatrix_text: Path | None = None, imatrix_ctx: int = 512, verbose: bool = False) -> dict:
    """Run every step for ``model``; return the manifest written to ``out``/manifest.json."""
    started = time.time()
    source = specs.resolve_source(model, revision=revision, specs_dir=specs_dir)
    out = out or specs.ROOT / "models" / source.name
    name = out.name
    assert name and name not in (".", ".."), f"--out {out} must name a folder models/NAME"
    if run_eval and not eval_text.is_file():
        raise BuildError(f"evaluation text {eval_text} does not exist")
    if imatrix_text is not None and not imatrix_text.is_file():
        raise BuildError(f"calibration text {imatrix_text} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    manifest = describe.read_manifest(out)
    steps: dict[str, float] = {}  # seconds per step

    # 1. fetch
    t = time.time()
    if source.hub_id:
        log(f"fetch {source.hub_id}@{source.revision}")
        got = fetch.fetch(repo_id=source.hub_id, revision=source.revision,
                          token=fetch.resolve_token(token_file=token_file), cache_dir=hub_cache)
        folder, commit = got.folder, got.commit
        src_record = {"kind": "hub", "id": source.hub_id, "revision": commit, "requested_revision": source.revision}
    else:
        folder, commit = source.local_dir, None
        src_record = {"kind": "local", "id": str(folder), "revision": None}
    converter = vendor.ensure_converter(cache=converter_cache)
    facts = check_checkpoint(folder, supported=converter.supported_architectures())
    inputs = {p.name: sha256_file(p) for p in input_files(folder)}
    steps["fetch"] = time.time() - t
    checkpoint_bytes = sum((folder / n).stat().st_size for n in inputs)
    log(f"checkpoint {folder}: {facts['architecture']}, {facts['dtype']}, {len(inputs)} files, {gib(checkpoint_bytes)}")
    n_weights = facts["tensor_bytes"] // (4 if facts["dtype"] == "float32" else 2)  # ~ parameter count
    planned = n_weights * 2 + sum(int(n_weights * quantize.BITS_PER_WEIGHT.get(q, 16) / 8) for q in quants)
    log(f"disk: this build writes up to {gib(planned)} to {out} ({gib(shutil.disk_usage(out).free)} free); "
        f"the 16-bit intermediate ({gib(n_weights * 2)}) is {'kept' if keep_intermediate else 'removed at the end'}")

    # 2. convert
    t = time.time()
    outtype = outtype or default_outtype(facts["dtype"])
    assert outtype in OUTTYPES, f"--outtype {outtype!r} is not one of {OUTTYPES}"
    ref = out / f"{name}-{outtype.upper()}.gguf"
    conv_key = {"inputs_digest": digest(inputs), "converter_sha256": converter.sdist_sha256}
    if _reusable(ref, manifest.get("intermediate"), **conv_key):
        log(f"convert: reusing {ref.name} (same inputs, same converter)")
        ref_sha = manifest["intermediate"]["sha256"]
    else:
        log(f"convert {folder.name} -> {ref.name} with llama.cpp {converter.llama_cpp_commit} "
            f"(log: {ref.with_suffix('.convert.log')}; --verbose shows it)")
        convert(checkpoint=folder, out=ref, outtype=outtype, converter=converter, verbose=verbose)
        ref_sha = sha256_file(ref)
    manifest["intermediate"] = {"file": ref.name, "type": outtype.upper(), "sha256": ref_sha,
                                "size_bytes": ref.stat().st_size, **conv_key}
    steps["convert"] = time.time() - t

    # 3. quantize (with an importance matrix from a calibration text, if one is given)
    t = time.time()
    matrix, im_sha = None, None
    if imatrix_text is not None and any(q not in NO_IMATRIX for q in quants):
        matrix, im_sha = _imatrix(manifest=manifest, out=out, ref=ref, ref_sha=ref_sha, text=imatrix_text,
                                  n_ctx=imatrix_ctx, threads=threads)
        steps["imatrix"] = time.time() - t
    engines = {q: e for q, e in manifest.get("engines", {}).items() if (out / e["file"]).is_file()}
    for q in quants:
        path = out / f"{name}-{q}.gguf"
        if path == ref:
            engines[q] = {"file": ref.name, "quant": q, "sha256": ref_sha, "size_bytes": ref.stat().st_size,
                          "source_sha256": ref_sha, "built_at": engines.get(q, {}).get("built_at") or now()}
            continue
        use = None if q in NO_IMATRIX else im_sha
        if _reusable(path, engines.get(q), source_sha256=ref_sha, imatrix_sha256=use):
            log(f"quantize: reusing {path.name}")
            continue
        log(f"quantize {ref.name} -> {path.name}" + (" with the importance matrix" if use else ""))
        tq = time.time()
        quantize.quantize(src=ref, out=path, qtype=q, threads=threads, verbose=verbose,
                          imatrix=matrix if use else None)
        engines[q] = {"file": path.name, "quant": q, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
                      "source_sha256": ref_sha, "imatrix_sha256": use, "built_at": now(),
                      "seconds": round(time.time() - tq, 1)}
    manifest["engines"] = engines
    steps["quantize"] = time.time() - t

    # 4. describe
    manifest.update({
        "name": name,
        "source": src_record,
        "spec": source.spec,
        "checkpoint": {"architecture": facts["architecture"], "dtype": facts["dtype"], "bytes": checkpoint_bytes},
        "inputs": inputs,
        "converter": {"llama_cpp_python": converter.package_version, "llama_cpp_commit": converter.llama_cpp_commit,
                      "sdist_sha256": converter.sdist_sha256},
        "versions": describe.versions(),
        "model": describe.gguf_facts(ref),
    })

    # 5. evaluate
    if run_eval:
        t = time.time()
        manifest["quality"] = _evaluate(manifest=manifest, out=out, ref=ref, quants=quants, text=eval_text,
                                        n_ctx=eval_ctx, max_chunks=eval_chunks, threads=threads)
        steps["evaluate"] = time.time() - t

    # Intermediate files and disk use.
    if not keep_intermediate and ref.name not in {e["file"] for e in engines.values()}:
        ref.unlink()
        log(f"removed the intermediate {ref.name} (--no-keep-intermediate)")
    manifest["intermediate"]["kept"] = ref.is_file()
    on_disk = sum(p.stat().st_size for p in out.glob("*.gguf"))
    manifest["disk"] = {"engines_dir_bytes": on_disk, "checkpoint_bytes": checkpoint_bytes,
                        "checkpoint_folder": str(folder)}
    manifest["build"] = {"finished_at": now(), "seconds": round(time.time() - started, 1),
                         "steps_seconds": {k: round(v, 1) for k, v in steps.items()},
                         "host": platform.node(), "machine": platform.machine(), "argv": sys.argv[1:]}
    first = ("manifest_version", "name", "source", "spec", "model", "engines", "quality", "intermediate")
    manifest = {**{k: manifest[k] for k in first if k in manifest}, **manifest}  # readable key order
    write_json_atomic(out / describe.MANIFEST, manifest)
    log(f"disk: {gib(on_disk)} of GGUF files in {out}; the checkpoint holds {gib(checkpoint_bytes)} in {folder}")
    return manifest


def _imatrix(*, manifest: dict, out: Path, ref: Path, ref_sha: str, text: Path, n_ctx: int,
             threads: int) -> tuple[dict, str]:
    """The importance matrix of ``ref`` on ``text`` (reused from NAME-imatrix.npz when its inputs match)."""
    path = out / f"{out.name}-imatrix.npz"
    key = {"source_sha256": ref_sha, "text": text.name, "text_sha256": sha256_file(text), "n_ctx": n_ctx}
    if _reusable(path, manifest.get("imatrix"), **key):
        log(f"imatrix: reusing {path.name}")
    else:
        log(f"imatrix: running {ref.name} over {text.name} (n_ctx {n_ctx})")
        matrix, n_tokens = imatrix.compute_imatrix(model=ref, text=text.read_text(), n_ctx=n_ctx, threads=threads)
        imatrix.save(matrix, path)
        manifest["imatrix"] = {"file": path.name, "sha256": sha256_file(path), "n_tokens": n_tokens,
                               "n_tensors": len(matrix), **key}
    return imatrix.load(path), manifest["imatrix"]["sha256"]


def _evaluate(*, manifest: dict, out: Path, ref: Path, quants: list[str], text: Path, n_ctx: int, max_chunks: int,
              threads: int) -> dict:
    """Quality rows for ``quants`` plus the reference, reusing rows whose engine and settings are unchanged."""
    ref_q = manifest["intermediate"]["type"]
    setting = {"text": text.name, "text_sha256": sha256_file(text), "n_ctx": n_ctx, "max_chunks": max_chunks,
               "reference": ref_q, "reference_sha256": manifest["intermediate"]["sha256"]}
    old = manifest.get("quality") or {}
    rows = dict(old.get("rows", {})) if all(old.get(k) == v for k, v in setting.items()) else {}
    engines = manifest["engines"]
    wanted = [ref_q] + [q for q in quants if q != ref_q]
    path_of = {q: out / engines[q]["file"] if q in engines else ref for q in wanted}
    sha_of = {q: engines[q]["sha256"] if q in engines else setting["reference_sha256"] for q in wanted}
    todo = [q for q in wanted if rows.get(q, {}).get("sha256") != sha_of[q]]  # new or rebuilt engines
    if todo:
        log(f"evaluate {', '.join(todo)} on {text.name} (n_ctx {n_ctx}) against {ref.name}")
        got = evaluate.evaluate(ref=ref, engines=[path_of[q] for q in todo], text=text.read_text(), n_ctx=n_ctx,
                                max_chunks=max_chunks, threads=threads or None, workdir=out)
        rows.update({q: {**got[path_of[q].name], "sha256": sha_of[q]} for q in todo})
    else:
        log("evaluate: reusing every row (same engines, same text)")
    rows = {q: rows[q] for q in wanted}
    print(evaluate.format_table(rows))
    png = chart.size_vs_kl(rows=rows, out=out / f"{manifest['name']}-quality.png",
                           title=f"{manifest['name']}: size vs KL ({rows[ref_q]['n_tokens_scored']} tokens)")
    log(f"chart: {png}")
    return {**setting, "rows": rows, "chart": png.name}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m build_engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="spec name, hub id (owner/name) or local checkpoint folder")
    parser.add_argument("--revision", help="hub branch, tag or commit (default: the spec's pin, else main)")
    parser.add_argument("--quant",
                        help=f"comma-separated llama.cpp file types (default: the spec's, else {DEFAULT_QUANT})")
    parser.add_argument("--out", type=Path, help="output folder models/NAME (default: models/<model name>)")
    parser.add_argument("--outtype", choices=OUTTYPES, help="16-bit intermediate type (default: the checkpoint's)")
    parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                        help="measure PPL, KL, top-1 and tok/s of each engine (default: on)")
    parser.add_argument("--eval-text", type=Path, default=evaluate.DEFAULT_TEXT, help="held-out text for --eval")
    parser.add_argument("--eval-ctx", type=int, default=512, help="tokens per evaluation chunk")
    parser.add_argument("--eval-chunks", type=int, default=8, help="evaluation chunks at most")
    parser.add_argument("--imatrix-text", type=Path,
                        help="calibration text: quantize the sub-8-bit types with an importance matrix from it")
    parser.add_argument("--imatrix-ctx", type=int, default=512, help="tokens per calibration chunk")
    parser.add_argument("--keep-intermediate", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the 16-bit GGUF after quantizing (needed to add levels cheaply later)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for quantize/evaluate (0: all)")
    parser.add_argument("--token-file", type=Path, default=fetch.DEFAULT_TOKEN_FILE,
                        help="hub token file when $HF_TOKEN is unset (a BuildKit secret lands here)")
    parser.add_argument("--hub-cache", type=Path, help="hub download cache (default: $HF_HOME/hub)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's logs")
    parser.add_argument("--converter-cache", type=Path, default=Path(os.environ.get(
        "BUILD_ENGINE_CONVERTER_CACHE", vendor.DEFAULT_CACHE)), help="where the llama.cpp converter is extracted")
    args = parser.parse_args(argv)
    requirements.check()  # torch & co. are not part of the serving setup
    try:
        spec = specs.load_spec(args.model)
        quants = quantize.parse_quant_list(args.quant or (spec or {}).get("recommended_quant") or DEFAULT_QUANT)
        manifest = build(model=args.model, quants=quants, out=args.out, revision=args.revision, outtype=args.outtype,
                         run_eval=args.eval, keep_intermediate=args.keep_intermediate, threads=args.threads,
                         eval_text=args.eval_text, eval_ctx=args.eval_ctx, eval_chunks=args.eval_chunks,
                         token_file=args.token_file, hub_cache=args.hub_cache, converter_cache=args.converter_cache,
                         imatrix_text=args.imatrix_text, imatrix_ctx=args.imatrix_ctx, verbose=args.verbose)
    except BuildError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise SystemExit(f"error: disk full while writing {err.filename or 'a build output'}") from None
        raise
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted; finished steps are kept and reused on the next run") from None
    out = args.out or specs.ROOT / "models" / manifest["name"]
    for q in quants:
        print(out / manifest["engines"][q]["file"])


if __name__ == "__main__":
    main()
