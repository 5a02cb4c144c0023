#!/usr/bin/env bash
# Set everything up, then serve the default model (or MODEL_PATH) on port 8080 (or PORT):
# nginx on the port, gunicorn behind it on a unix socket (app/serve.py), as in the Docker image.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m app.serve --bind "0.0.0.0:${PORT:-8080}"
