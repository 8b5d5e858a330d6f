#!/usr/bin/env bash
# Fill DEST (default .whl, git-ignored through .git/info/exclude) with what bench/dvc_gpu.py needs on
# a GPU machine that has torch/transformers/peft but no network: the project's GPU wheels
# (../shared/tools/device-wheels: trl, datasets, bitsandbytes, ...) plus dvc and dvclive with every
# dependency that machine lacks, for Python 3.12. antlr4-python3-runtime 4.9.3 (hydra-core's pin,
# which math-verify also accepts) has only an sdist: its wheel is built here.
#
#   bash bench/dvc_gpu_wheels.sh [DEST] [ALREADY_THERE]
#
# ALREADY_THERE: a file of package names installed on the GPU machine (whitespace separated, '#'
# comment lines; default: none skipped; bench/gpu-machine-packages.txt is the lent H200's). There:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DEST/*.whl
#   PYTHONPATH=/tmp/site python3 bench/dvc_gpu.py --tokenizer DIR --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
have=${2:-/dev/null}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
dvc_pins=$(grep -E '^(dvc|dvclive)==' requirements/constraints.txt)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

../shared/tools/device-wheels "$dest" >/dev/null
rm -f "$dest"/antlr4_python3_runtime-*.whl "$dest"/antlr4-python3-runtime-*.whl
python3 -m pip wheel -q --no-deps -w "$dest" "antlr4-python3-runtime==4.9.3"
# Resolve dvc + dvclive for the GPU machine's Python, then fetch what it does not already have.
# shellcheck disable=SC2086
python3 -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" --target "$tmp/x" \
  --python-version 3.12 --implementation cp "${plat[@]}" --only-binary=:all: --find-links "$dest" \
  $dvc_pins "antlr4-python3-runtime==4.9.3"
python3 - "$tmp/report.json" "$have" > "$tmp/missing.txt" <<'PY'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
lines = [line for line in open(sys.argv[2]) if not line.startswith("#")]
have = {norm(n) for line in lines for n in line.split()} | {"antlr4-python3-runtime"}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if norm(meta["name"]) not in have:
        print(f"{meta['name']}=={meta['version']}")
PY
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$dest" -r "$tmp/missing.txt"
echo "dvc_gpu_wheels: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
