"""The CPU profile's learning task: single-digit addition ("What is 3 + 4?" -> 7).

SmolLM2-135M-Instruct, the CPU profile's model, scores ~0% on every shipped benchmark before and
after a few CPU training steps, so a first run on those alone shows no learning. This task is one it
learns in ~20 LoRA steps on 2 cores (0% -> ~90%, tests/test_learning.py), so the CPU profile trains on
it and reports a significant adapter-vs-base difference on held-out problems of it.

Defined here once; the files the pipeline reads are generated from it (`python -m tinyreason.addition`
rewrites them; tests/test_addition.py checks they match):
    data/raw/addition/train.jsonl          68 problems, GSM8K fields (prepare.train_path of the profile)
    data/benchmarks/addition/test.jsonl    the other 32, the `addition` benchmark (held out)
Rows use GSM8K's fields (`question`, `answer` = worked step + `#### N`), so the existing GSM8K readers
load both files unchanged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_FILE = REPO_ROOT / "data/raw/addition/train.jsonl"
TEST_FILE = REPO_ROOT / "data/benchmarks/addition/test.jsonl"
# A fixed shuffle (not params' seed): the split is data, vendored and shared by the test and the profile.
SPLIT_SEED = 7
N_TEST = 32  # 32 held-out problems: 0/32 -> ~29/32 has a paired 95% interval far above 0


def all_pairs() -> list[tuple[int, int]]:
    """Every (a, b) with single digits, in the fixed shuffled order."""
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(SPLIT_SEED).shuffle(pairs)
    return pairs


def split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, test): disjoint, 68 and 32 problems."""
    pairs = all_pairs()
    return pairs[:-N_TEST], pairs[-N_TEST:]


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def row(a: int, b: int) -> dict:
    """One problem in GSM8K's fields: the reasoning is the sum written out, the gold after `####`."""
    return {"id": f"addition-{a}+{b}", "question": question(a, b), "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}


def file_texts() -> dict[Path, str]:
    train, test = split_pairs()
    return {path: "".join(json.dumps(row(a, b)) + "\n" for a, b in pairs)
            for path, pairs in ((TRAIN_FILE, train), (TEST_FILE, test))}


def write_files() -> None:
    for path, text in file_texts().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    write_files()
    print(f"wrote {TRAIN_FILE} and {TEST_FILE}")
