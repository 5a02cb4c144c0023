#!/usr/bin/env bash
# Set everything up, then run the whole test suite (all three rings). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
