#!/usr/bin/env bash
# Install the Debian/Ubuntu packages one image stage needs, then drop apt's lists.
#   BACKEND=cuda|cpu docker/system-packages.sh builder|runtime            install (as root, in the image)
#   BACKEND=cuda|cpu docker/system-packages.sh builder|runtime --print    print the package names only
# The CUDA images (Ubuntu) take Python from apt; the CPU images are python:*-slim and have it already.
set -euo pipefail

role=${1:?usage: system-packages.sh builder|runtime [--print]}
backend=${BACKEND:-cuda}
case "$role/$backend" in
    # build-essential + cmake: llama.cpp's compile; git: pip's VCS support and llama.cpp's build number.
    builder/cpu)  packages=(build-essential cmake git ca-certificates) ;;
    builder/cuda) packages=(build-essential cmake git ca-certificates python3 python3-venv python3-dev) ;;
    # libgomp1: llama.cpp's CPU threads (OpenMP). nginx: the buffering proxy in front of gunicorn
    # (app/serve.py). The CUDA runtime's venv runs on the system python3, the same interpreter the
    # builder made it with.
    runtime/cpu)  packages=(libgomp1 nginx) ;;
    runtime/cuda) packages=(libgomp1 nginx python3) ;;
    *) echo "system-packages.sh: unknown role/BACKEND '$role/$backend' (known: builder|runtime, cuda|cpu)" >&2; exit 2 ;;
esac

if [ "${2:-}" = "--print" ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install --yes --no-install-recommends "${packages[@]}"
rm -rf /var/lib/apt/lists/*   # The lists are only needed to install; keep them out of the layer.
