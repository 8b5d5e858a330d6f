"""`tinyreason` console commands. Each subcommand lives in the module it belongs to; this file only
wires them, and turns a TinyReasonError into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from tinyreason.errors import TinyReasonError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyreason", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # Each module registers its own subcommand: add_parser(sub) sets `func` via set_defaults.
    # (Registration lines are added below as the modules land.)
    from tinyreason import verify_grader

    verify_grader.add_parser(sub)  # verify-grader
    from tinyreason import chat

    chat.add_parser(sub)  # chat, solve
    from tinyreason import recipes

    recipes.add_parser(sub)  # recipe (Tina GRPO presets)
    from tinyreason import evaluation

    evaluation.add_parser(sub)  # compare
    from tinyreason import export

    export.add_parser(sub)  # export
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TinyReasonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
