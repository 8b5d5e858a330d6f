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
    argv = sys.argv[1:] if argv is None else list(argv)
    # `tinyreason recipe NAME [options] -- <dvc exp run flags>`: what follows `--` goes to DVC as is,
    # wherever the options stand (argparse hands `--` only to a trailing positional).
    dvc_args: list[str] = []
    if argv[:1] == ["recipe"] and "--" in argv:
        argv, dvc_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = build_parser().parse_args(argv)
    if dvc_args:
        args.dvc_args = dvc_args
    try:
        return int(args.func(args) or 0)
    except TinyReasonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
