#!/usr/bin/env bash
# Build the CUDA image (docker/Dockerfile) with no image registry: the local Debian base
# (scripts/make-base-image.sh, debootstrap) instead of nvidia/cuda, and the CUDA build of torch from
# the package index (its nvidia-* wheels bring the CUDA runtime libraries; the host needs only the
# NVIDIA driver and the container toolkit). The wheels are fetched on the host
# (scripts/make-wheelhouse.sh into docker/wheels/cuda/, so the host's pip settings, proxy and
# certificates apply) and served to the build over HTTP on 127.0.0.1 (--network host): nothing is
# copied into a layer. Then, with no GPU, checks inside the image that torch is a CUDA build and that
# bitsandbytes imports, and prints the build time and the image size.
#
#   scripts/build-cuda-image.sh [TAG]      (default tinyreason:cuda; root, for debootstrap)
#
# Env: TORCH_VERSION (default 2.13.0: PyPI's build, CUDA 13.0, driver R580+; for older drivers
# 2.13.0+cu128 with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128), EXTRAS (default
# gpu,dev), BUILD_ARGS (more docker build flags), PORT (default 8765).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-tinyreason:cuda}"
BASE="${BASE:-tinyreason/bookworm-base:local}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
EXTRAS="${EXTRAS:-gpu,dev}"
PORT="${PORT:-8765}"
WHEELS=docker/wheels/cuda

start=$(date +%s)
scripts/make-base-image.sh "$BASE"
base_done=$(date +%s)
# The image's python is Debian bookworm's 3.11: the wheels are resolved for the host's python3,
# which must be 3.11 too (make-wheelhouse.sh says so). SMOKE_PACKAGES: none in the CUDA image.
EXTRAS="$EXTRAS" TORCH_VERSION="$TORCH_VERSION" SMOKE_PACKAGES="" scripts/make-wheelhouse.sh "$WHEELS"
wheels_done=$(date +%s)
if ls "$WHEELS"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    echo "build-cuda-image: pip took a CPU torch wheel into $WHEELS (a find-links folder holds one?):" \
         "unset PIP_FIND_LINKS / pip's find-links, empty $WHEELS, run again" >&2
    exit 1
fi
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WHEELS" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# shellcheck disable=SC2086
docker build --network host -f docker/Dockerfile -t "$TAG" \
    --build-arg BASE="$BASE" --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg EXTRAS="$EXTRAS" \
    --build-arg WHEELS_URL="http://127.0.0.1:$PORT/" ${BUILD_ARGS:-} .
end=$(date +%s)

# No GPU here: the checks need none (torch.version.cuda is the build's CUDA, bitsandbytes loads its
# CPU library when no GPU is visible and still imports).
docker run --rm --network none -e TINYREASON_QUIET=1 "$TAG" python -c '
import torch, bitsandbytes, transformers, trl, peft
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), bitsandbytes {bitsandbytes.__version__}, "
      f"transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}; "
      f"GPU visible: {torch.cuda.is_available()}")'
size=$(docker image inspect "$TAG" --format '{{.Size}}')
echo "build-cuda-image: $TAG in $((end - start)) s (base image $((base_done - start)) s, wheels" \
     "$((wheels_done - base_done)) s, docker build $((end - wheels_done)) s); image size $((size / 1024 / 1024)) MiB"
