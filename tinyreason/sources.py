"""Where rows come from: a local JSONL file or a Hugging Face Hub dataset. The one JSONL reader and the
one hub loader of the pipeline (training data, GRPO problems, benchmarks and the stages' prepared splits).
"""

from __future__ import annotations

import json
from pathlib import Path

from tinyreason.errors import DataError


def iter_jsonl(path: str | Path, fix: str = "correct or delete that line"):
    """(line number, row) for each non-blank line; a line that is not JSON is a one-line DataError ending
    with `fix`."""
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg}) (fix: {fix})") from None
            yield lineno, row


def read_jsonl(path: str | Path, fix: str = "correct or delete that line") -> list:
    """Every row of a JSONL file (blank lines skipped); a malformed line is a one-line DataError."""
    return [row for _, row in iter_jsonl(path, fix)]


def read_jsonl_counting_malformed(path: str | Path) -> tuple[list, int]:
    """Rows of a JSONL file and how many lines were not JSON (counted as malformed, not fatal)."""
    rows, bad = [], 0
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad


def load_hub_rows(hub_id: str, config: str | None, split: str, what: str, fix: str,
                  revision: str | None = None) -> list[dict]:
    """The rows of a hub dataset split (at `revision`: a commit, tag or branch); any failure (network, auth
    for gated sets, unknown id, config, split or revision) is a one-line DataError naming `what` was loaded
    and ending with `fix`."""
    try:
        import datasets  # heavy import: only when a hub id is asked for

        pinned = {"revision": revision} if revision else {}
        dataset = datasets.load_dataset(hub_id, config, split=split, **pinned)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        at = f" @ {revision}" if revision else ""
        raise DataError(f"cannot load {what} from the Hugging Face Hub ({hub_id}{at}{', ' + config if config else ''}, "
                        f"split {split}): {type(exc).__name__}: {reason} (fix: {fix})") from None
    return [dict(row) for row in dataset]
