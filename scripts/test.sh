#!/usr/bin/env bash
# Install, then run the test suite (all of it, slow tests included; add -m "not slow" to skip them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
[ -n "${VIRTUAL_ENV:-}" ] || source .venv/bin/activate
python -m pytest "$@"
