#!/usr/bin/env bash
# The image's Python environments, in two steps that are separate layers of the builder stage:
#   docker/install.sh wheel WHEEL_DIR           compile llama-cpp-python (the version requirements.txt pins)
#                                               into WHEEL_DIR, or copy it from LLAMA_WHEEL_CACHE
#   docker/install.sh venv VENV REQ_FILE...     create VENV, install that wheel, then the requirement files
#   docker/install.sh cache-key                 print the cache slot name of this BACKEND's wheel
# Environment: BACKEND=cuda|cpu, CUDA_ARCHITECTURES (e.g. "80;86;89;90"), PYTHON (default python3),
# WHEEL_DIR (for `venv`; default /wheels), LLAMA_WHEEL_CACHE (optional: compiled wheels kept across builds).
# Run from the repository root (the Dockerfile's WORKDIR holds the same files); CI runs it here with BACKEND=cpu.
set -euo pipefail
. "$(dirname "$0")/cuda-stub.sh"

PYTHON=${PYTHON:-python3}
BACKEND=${BACKEND:-cuda}
case "$BACKEND" in
    cuda|cpu) ;;
    *) echo "install.sh: unknown BACKEND '$BACKEND' (known: cuda, cpu)" >&2; exit 2 ;;
esac

# The one llama-cpp-python pin, read from requirements.txt so the image and CI cannot disagree.
llama_version() {
    local pin
    pin=$(sed -n 's/^llama-cpp-python==\([^ ;#]*\).*/\1/p' requirements.txt)
    [ -n "$pin" ] || { echo "install.sh: no 'llama-cpp-python==' pin in requirements.txt" >&2; exit 2; }
    echo "$pin"
}

# llama.cpp's build options per backend. GGML_NATIVE=OFF: the image runs on other CPUs than the one that
# built it, so compile for the x86-64 AVX2 baseline instead of -march=native.
cmake_args() {
    case "$BACKEND" in
        cpu)  echo "-DGGML_NATIVE=OFF -DGGML_CUDA=OFF" ;;
        # CUDA_ARCHITECTURES: SASS + PTX per listed compute capability (80 A100, 86 A10/RTX 3090,
        # 89 RTX 4090/L4/L40S, 90 H100/H200). The linker flag tolerates libcuda.so.1 being absent at
        # build time: it is the driver's, mounted into the container only when it runs with --gpus.
        cuda) echo "-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:?CUDA_ARCHITECTURES is required for BACKEND=cuda} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" ;;
    esac
}

# Everything that changes the compiled library names its cache slot, so a CPU wheel is never
# reused for CUDA (pip's own wheel cache keys only on the sdist, not on CMAKE_ARGS).
cache_key() {
    local os
    os=$(. /etc/os-release && echo "${ID}${VERSION_ID}")
    local key="llama-cpp-python-$1-${BACKEND}-${os}"
    if [ "$BACKEND" = cuda ]; then
        key="${key}-cuda${CUDA_VERSION:-unknown}-sm${CUDA_ARCHITECTURES//;/_}"
    fi
    echo "$key"
}

build_wheel() {
    local out=${1:?usage: install.sh wheel WHEEL_DIR}
    local version args key
    version=$(llama_version)
    args=$(cmake_args)
    key=$(cache_key "$version")
    mkdir -p "$out"
    local cached=${LLAMA_WHEEL_CACHE:+$LLAMA_WHEEL_CACHE/$key}
    if [ -n "$cached" ] && compgen -G "$cached/llama_cpp_python-$version-*.whl" >/dev/null; then
        echo "install.sh: reusing the compiled wheel in $cached"
    else
        echo "install.sh: compiling llama-cpp-python==$version with CMAKE_ARGS='$args'"
        local tmp
        tmp=$(mktemp -d)
        # --no-cache-dir: never take a wheel pip compiled earlier with other CMAKE_ARGS.
        CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
            "$PYTHON" -m pip wheel --no-deps --no-cache-dir --wheel-dir "$tmp" "llama-cpp-python==$version"
        if [ -n "$cached" ]; then
            mkdir -p "$cached"
            cp "$tmp"/llama_cpp_python-"$version"-*.whl "$cached"/
        else
            cached=$tmp
        fi
    fi
    cp "$cached"/llama_cpp_python-"$version"-*.whl "$out"/
    ls "$out"/llama_cpp_python-"$version"-*.whl
}

make_venv() {
    local venv=${1:?usage: install.sh venv VENV REQ_FILE...}
    shift
    [ "$#" -gt 0 ] || { echo "install.sh venv: name at least one requirements file" >&2; exit 2; }
    local wheel_dir=${WHEEL_DIR:-/wheels}
    local version wheels
    version=$(llama_version)
    wheels=("$wheel_dir"/llama_cpp_python-"$version"-*.whl)
    [ -f "${wheels[0]}" ] || { echo "install.sh: no llama_cpp_python-$version wheel in $wheel_dir (run 'install.sh wheel' first)" >&2; exit 2; }
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The compiled wheel first: the requirement files' pin is then already satisfied, never rebuilt.
    "$venv/bin/python" -m pip install --quiet "${wheels[0]}"
    local req_args=()
    for req in "$@"; do req_args+=(-r "$req"); done
    "$venv/bin/python" -m pip install --quiet "${req_args[@]}"
    use_cuda_stub_if_needed   # A CUDA build imports only with libcuda.so.1 present (see cuda-stub.sh).
    "$venv/bin/python" -c "import llama_cpp; print('install.sh: llama_cpp', llama_cpp.__version__, 'in $venv')"
}

case "${1:-}" in
    cache-key) cache_key "$(llama_version)" ;;   # For tests: the cache slot this environment uses.
    wheel) shift; build_wheel "$@" ;;
    venv)  shift; make_venv "$@" ;;
    *) echo "usage: install.sh wheel WHEEL_DIR | venv VENV REQ_FILE... | cache-key" >&2; exit 2 ;;
esac
