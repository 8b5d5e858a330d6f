"""User-facing errors: one line that names the file or key and says how to fix it.

Stages and the CLI catch `TinyReasonError`, print its message on one line and exit with code 2,
so a bad input never ends in a traceback from deep inside a library.
"""


class TinyReasonError(Exception):
    """A problem the user can fix (bad params, bad data, missing files). Message: one line."""


class ConfigError(TinyReasonError):
    """params.yaml (or an override) has an unknown key, a wrong type or a value out of range."""


class DataError(TinyReasonError):
    """A dataset file is missing, malformed, or empty after filtering."""


def run_stage(main) -> int:
    """Run a stage's main(); a TinyReasonError becomes one line on stderr and exit code 2."""
    import errno
    import sys

    try:
        main()
    except TinyReasonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk anywhere (checkpoints, caches): one line, not a traceback
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {exc.filename or 'an output'}: no space left on device (fix: free disk space, "
              "then rerun the stage; a killed train stage resumes from its last checkpoint)", file=sys.stderr)
        return 2
    return 0
