"""DVC stage `check` (first in the DAG): params.yaml and every input validated -> checks/passed.json.

A failure here stops DVC before it removes any other stage's outputs (tinyreason/checks.py)."""

import logging
import sys

from tinyreason import checks, paths
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_write_json


def main() -> None:
    checks.check_run(paths.PARAMS)
    atomic_write_json(paths.CHECK_PASSED, {"checked": checks.CHECKED})
    print(f"check: params and inputs are valid ({len(checks.CHECKED)} checks)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
