#!/usr/bin/env bash
# Set everything up, then serve the default model (or MODEL_PATH) on port 8080 (or PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gunicorn -c gunicorn.conf.py -b "0.0.0.0:${PORT:-8080}" wsgi:app
