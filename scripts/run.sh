#!/usr/bin/env bash
# Install, then run the main job: the seeded Tiny-Reason recipe (`dvc repro`) where a CUDA GPU and
# the Hugging Face hub are reachable, else the offline CPU profile as a DVC experiment run in a
# temporary copy (`dvc exp run --temp -S profile=cpu`). Either way the checkout's tracked files,
# params.yaml included, are left as they were.
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
  echo "run.sh: CUDA GPU and hub reachable -> the seeded recipe (params.yaml as it is): dvc repro"
  dvc repro
  echo
  tinyreason compare                       # the adapter vs the base model, per benchmark
  echo "run.sh: done (outputs and dvc.lock in this checkout; params.yaml unchanged). Where to look next:"
  echo "  dvc plots show                 training and evaluation curves -> dvc_plots/index.html"
  echo "  predictions/<benchmark>.jsonl  every answer, graded; tinyreason chat asks the trained model"
  echo "  dvc exp run -S train.learning_rate=1e-4   a variant; dvc exp show --only-changed compares runs"
else
  why=$([ "$has_gpu" = 1 ] && echo "the hub is unreachable" || echo "no CUDA GPU")
  # A plain `dvc exp run -S profile=cpu` applies the experiment to the workspace: params.yaml is
  # rewritten to profile: cpu. --temp runs it in a temporary copy and keeps it as an experiment
  # (a git ref), so this checkout stays as it was and the results are one command away.
  name="cpu-$(date -u +%Y%m%d-%H%M%S)"
  echo "run.sh: $why -> the offline CPU profile as experiment $name: dvc exp run --temp -n $name -S profile=cpu"
  dvc exp run --temp -n "$name" -S profile=cpu
  echo
  tinyreason compare --rev "$name"         # the adapter vs the base model, per benchmark
  echo "run.sh: done; the run is experiment $name (this checkout and its params.yaml are unchanged). Next:"
  echo "  dvc exp show --only-changed    $name beside your other runs: params that differ, metrics"
  echo "  dvc exp apply $name   its outputs here (also sets profile: cpu), then dvc plots show"
  echo "  tinyreason chat --profile cpu  after dvc exp apply: ask the trained model (predictions/*.jsonl: every answer)"
fi
