#!/usr/bin/env bash
# Install, then run the main job: the seeded Tiny-Reason recipe (`dvc repro`) where a CUDA GPU and
# the Hugging Face hub are reachable, else the offline CPU profile (`dvc exp run -S profile=cpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
[ -n "${VIRTUAL_ENV:-}" ] || source .venv/bin/activate
[ -d .git ] || { echo "run.sh: DVC needs a git checkout (git clone the repository)" >&2; exit 2; }
[ -d .dvc ] || dvc init -q
has_gpu=$(python -c 'import torch; print(int(torch.cuda.is_available()))')
has_hub=$(python - <<'PY'
import socket
try:
    socket.create_connection(("huggingface.co", 443), timeout=5).close(); print(1)
except OSError:
    print(0)
PY
)
if [ "$has_gpu" = 1 ] && [ "$has_hub" = 1 ]; then
  echo "run.sh: CUDA GPU and hub reachable -> the seeded recipe: dvc repro"
  dvc repro
else
  why=$([ "$has_gpu" = 1 ] && echo "the hub is unreachable" || echo "no CUDA GPU")
  echo "run.sh: $why -> the offline CPU profile: dvc exp run -S profile=cpu"
  dvc exp run -S profile=cpu
fi
dvc metrics show
