#!/usr/bin/env bash
# The builder's model steps: build_engine's own command line, run in two layers.
#   docker/build-engine.sh convert  WORK_DIR              fetch the checkpoint, convert it to a 16-bit GGUF
#   docker/build-engine.sh quantize WORK_DIR ENGINE_DIR   quantize to QUANT; put the engine in ENGINE_DIR
# Environment: MODEL (spec name, hub id or checkpoint folder), REVISION (optional), QUANT (one type,
# e.g. Q4_K_M), PYTHON (an interpreter with requirements-build.txt installed), HF_TOKEN_FILE (optional:
# a file holding a hub token, e.g. a BuildKit secret), BACKEND (cuda|cpu).
# Both steps run the same `python -m build_engine` command; the second reuses the first's 16-bit GGUF
# (build_engine skips finished steps whose inputs are unchanged), so a new QUANT costs one quantization.
# ENGINE_DIR ends up with NAME-QUANT.gguf, manifest.json and model.gguf, a relative link to the GGUF
# that MODEL_PATH names, whatever the model and quant are.
set -euo pipefail
. "$(dirname "$0")/cuda-stub.sh"

PYTHON=${PYTHON:-python3}
MODEL=${MODEL:?MODEL is required: a spec name under models/specs/, a hub id or a checkpoint folder}
REVISION=${REVISION:-}
# The 16-bit type both steps name, so the second finds the first's file (f16 holds bf16 weights of
# LLM checkpoints without loss in practice, and is what llama.cpp's tools default to).
OUTTYPE=f16

step=${1:?usage: build-engine.sh convert WORK_DIR | quantize WORK_DIR ENGINE_DIR}
work=${2:?usage: build-engine.sh convert WORK_DIR | quantize WORK_DIR ENGINE_DIR}
mkdir -p "$work"
use_cuda_stub_if_needed   # build_engine loads the engine library (see cuda-stub.sh).

# The models/NAME folder name build_engine itself would choose for MODEL.
name=$("$PYTHON" -c 'import sys; from build_engine.specs import resolve_source; print(resolve_source(sys.argv[1], revision=sys.argv[2] or None).name)' "$MODEL" "$REVISION")

build() {
    local args=(--model "$MODEL" --quant "$1" --outtype "$OUTTYPE" --out "$work/$name" --no-eval)
    [ -z "$REVISION" ] || args+=(--revision "$REVISION")
    # The token file is read by build_engine itself; the token is never in an argument or the environment.
    [ -z "${HF_TOKEN_FILE:-}" ] || args+=(--token-file "$HF_TOKEN_FILE")
    echo "build-engine.sh: $PYTHON -m build_engine ${args[*]}" >&2
    "$PYTHON" -m build_engine "${args[@]}"
}

case "$step" in
    convert)
        build "${OUTTYPE^^}"   # The 16-bit GGUF is the engine of this quant type: nothing is quantized.
        ;;
    quantize)
        engine_dir=${3:?usage: build-engine.sh quantize WORK_DIR ENGINE_DIR}
        QUANT=${QUANT:?QUANT is required, e.g. Q4_K_M}
        case "$QUANT" in
            *,*) echo "build-engine.sh: QUANT names one type, got '$QUANT' (build one image per type)" >&2; exit 2 ;;
        esac
        gguf=$(build "$QUANT" | tail -n 1)   # build_engine prints the path of each engine it built.
        [ -f "$gguf" ] || { echo "build-engine.sh: build_engine reported '$gguf', which is not a file" >&2; exit 1; }
        rm -rf "$engine_dir"
        mkdir -p "$engine_dir"
        ln "$gguf" "$engine_dir/" 2>/dev/null || cp "$gguf" "$engine_dir/"   # A hard link costs no space.
        cp "$work/$name/manifest.json" "$engine_dir/"
        ln -s "$(basename "$gguf")" "$engine_dir/model.gguf"
        ls -l "$engine_dir"
        ;;
    *)
        echo "build-engine.sh: unknown step '$step' (known: convert, quantize)" >&2
        exit 2
        ;;
esac
