"""Atomic outputs: everything is written to a temporary sibling and renamed when complete, so a
killed stage never leaves a file or directory that looks finished (and that DVC would cache).

A full disk (ENOSPC/EDQUOT) becomes a one-line `TinyReasonError` naming the output; the partial
temporary file or directory is removed, and an existing output is left as it was.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tinyreason.errors import TinyReasonError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; outputs get the modes a plain open()/mkdir() would give.
FILE_MODE, DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


class DiskFullError(TinyReasonError):
    """ENOSPC/EDQUOT while writing `path`, as one line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(f"{path}: no space left on device while writing it (fix: free disk space, then "
                         "rerun the stage; nothing was written)")


def atomic_write_files(contents: dict) -> None:
    """Write several files as one output: every file goes to a temporary sibling first (synced),
    and only when all are complete are they renamed into place, so a failure or a kill while
    writing leaves every old file as it was."""
    written: list[tuple[str, Path]] = []
    try:
        for path, text in contents.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            written.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, FILE_MODE)
    except BaseException as exc:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(written[-1][1] if written else "output") from None
        raise
    for tmp, path in written:
        os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_files({path: text})


def jsonl_text(rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    atomic_write_text(path, jsonl_text(rows))


@contextmanager
def atomic_directory(path: str | Path):
    """Yields a temporary directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DiskFullError) and tmp in exc.path.parents:  # name the output, not the temp
            raise DiskFullError(path / exc.path.relative_to(tmp)) from None
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(path) from None
        raise
    if path.exists():
        # Move the old output aside in one rename, so a kill never leaves a half-deleted `path`.
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete what a killed writer of `path` left behind (`.<name>.*.tmp` / `.old` siblings)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for pattern in (f".{glob.escape(path.name)}.*.tmp", f".{glob.escape(path.name)}.*.old"):
        for stale in path.parent.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
