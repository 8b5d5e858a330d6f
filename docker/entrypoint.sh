#!/usr/bin/env bash
# Entrypoint of the tinyreason image. Runs its arguments in the bind-mounted repo (/work/repo):
#   (no args)                  -> dvc repro                (the image's CMD)
#   repro | exp run -S ...     -> dvc repro | dvc exp run -S ...   (first word not a program: a DVC subcommand)
#   bash | pytest -q | dvc ... -> run as given
set -euo pipefail

# Any --user uid works: give it a writable HOME (git, dvc and pip write config/caches there).
if [ ! -w "${HOME:-/nonexistent}" ]; then
    export HOME="/tmp/home-$(id -u)"
    mkdir -p "$HOME"
fi

# An arbitrary --user uid has no /etc/passwd entry: getpass.getuser() (DVC, torch) then falls back
# to getpwuid() and fails, unless USER/LOGNAME are set.
if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
    export USER="${USER:-user$(id -u)}" LOGNAME="${LOGNAME:-user$(id -u)}"
fi

if [ ! -e .git ] || { [ ! -f dvc.yaml ] && [ ! -d .dvc ]; }; then
    echo "tinyreason-entrypoint: $(pwd) is not the tinyreason git+DVC repo." >&2
    echo "  mount the checkout: docker run -v \"\$PWD:/work/repo\" ... (make gpu-repro does this)" >&2
    if [ "$#" -eq 0 ] || [ "$1" = dvc ] || ! command -v "$1" >/dev/null 2>&1; then exit 64; fi
fi

# DVC commits experiments (dvc exp run) and needs a git identity; pass yours with
# -e GIT_AUTHOR_NAME=... -e GIT_AUTHOR_EMAIL=... (the Makefile does), else a neutral one is used.
for v in GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL; do
    [ -n "${!v:-}" ] || unset "$v"    # an empty -e VAR= would beat the repo's git config
done
if [ -z "$(git config user.email 2>/dev/null || true)" ]; then
    export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-tinyreason container}"
    export GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-tinyreason@localhost}"
    export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
    export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
fi

if [ "$#" -eq 0 ]; then
    set -- dvc repro
elif [ "${1#-}" != "$1" ] || ! command -v "$1" >/dev/null 2>&1; then
    set -- dvc "$@"
fi

if [ "${TINYREASON_QUIET:-0}" != 1 ]; then
    python - <<'PY' >&2 || true
import torch
cuda = torch.cuda.is_available()
print(f"[tinyreason] torch {torch.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no (CPU)'}")
PY
fi
exec "$@"
