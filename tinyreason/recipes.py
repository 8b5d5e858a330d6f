"""Tina recipe presets (recipes/*.yaml) -> one `dvc exp run -n tina-NAME-<time> -S key=value ...` command.

config.py reads and merges the overlay files (it is the only YAML reader); this module validates a
preset over a params file, turns it into DVC's `-S` flags (Hydra syntax) and runs it:
`tinyreason recipe NAME [--queue] [--name N] [--dry-run] [-- extra dvc exp run flags]`, `tinyreason recipe --list`.
"""

from __future__ import annotations

from pathlib import Path

from tinyreason.config import RECIPES_DIR, load_recipe_overlay, recipe_extends


def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """Presets: the recipes no other recipe extends (the leaves: open-rs1, still-3, ...)."""
    chain = recipe_extends(directory)
    return sorted(set(chain) - set(chain.values()))


def overlay_names(directory: Path = RECIPES_DIR) -> list[str]:
    """Shared overlays the presets extend (tina-base, eval-tina); each can also be applied on its own."""
    chain = recipe_extends(directory)
    return sorted(set(chain) & set(chain.values()))


def load_recipe(name: str, directory: Path = RECIPES_DIR) -> dict:
    """The preset's params overlay, with its `extends:` chain merged in (base first); config.py reads it."""
    return load_recipe_overlay(name, directory)


def flatten_params(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested overlay -> (dotted key, value) pairs in file order; lists stay whole values."""
    out = []
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten_params(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def _hydra_value(value) -> str:
    """A value in Hydra override syntax (what `dvc exp run -S` parses)."""
    import re

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:-]*", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def default_experiment_name(recipe: str) -> str:
    """tina-NAME-<UTC time>-<4 hex>: unique per run, so running a preset again on the same commit (or
    queueing it twice in a second) never meets DVC's ExperimentExistsError."""
    import secrets
    import time

    return f"tina-{recipe}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def recipe_command(name: str, params_path: Path | str = "params.yaml", directory: Path = RECIPES_DIR,
                   extra: list[str] | None = None, experiment: str | None = None, queue: bool = False) -> list[str]:
    """Validate the preset against config.py (merged over params_path) and build its dvc command."""
    from tinyreason.config import _deep_merge, config_from_dict, load_params_mapping

    recipe = load_recipe(name, directory)
    base = load_params_mapping(params_path)
    config_from_dict(_deep_merge(base or {}, recipe["params"]), source=f"recipes/{name}.yaml over {params_path}")
    cmd = ["dvc", "exp", "run", "-n", experiment or default_experiment_name(name)] + (["--queue"] if queue else [])
    for key, value in flatten_params(recipe["params"]):
        # Hydra (under `dvc exp run -S`) refuses to set a key the params file lacks unless it is
        # marked `+` (append), e.g. evaluate.benchmarks.aime24.samples
        plus = "" if _has_key(base or {}, key) else "+"
        cmd += ["-S", f"{plus}{key}={_hydra_value(value)}"]
    return cmd + list(extra or [])


def _has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _run_recipe(args) -> int:
    import shlex
    import subprocess

    if args.list or not args.name:
        for name in recipe_names():
            print(f"{name:18s} {load_recipe(name)['description']}")
        print("\nshared overlays (every preset above extends them; usable alone too):")
        for name in overlay_names():
            print(f"{name:18s} {load_recipe(name)['description']}")
        return 0
    cmd = recipe_command(args.name, args.params, extra=args.dvc_args, experiment=args.experiment, queue=args.queue)
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def add_parser(subparsers) -> None:
    """`tinyreason recipe NAME [options] [-- dvc flags]`: run a Tina preset (recipes/NAME.yaml) as a DVC
    experiment. Everything after `--` goes to `dvc exp run` as is (cli.main splits it off, so the options
    may stand anywhere)."""
    p = subparsers.add_parser("recipe", help="run a Tina GRPO preset (recipes/*.yaml) as a DVC experiment",
                              description="Turn recipes/NAME.yaml into `dvc exp run -n tina-NAME-<time> -S key=value "
                                          "...` (validated against params.yaml first) and run it. Flags after `--` "
                                          "go to dvc exp run: tinyreason recipe open-rs2 --queue -- -S "
                                          "'train.learning_rate=1e-6,2e-6' queues a sweep (then: dvc queue start).")
    p.add_argument("name", nargs="?", help="preset or shared overlay name, e.g. eval-tina (see --list)")
    p.add_argument("--queue", action="store_true", help="queue the run (dvc exp run --queue); run the queue "
                                                        "with `dvc queue start`")
    p.add_argument("--name", dest="experiment", metavar="N", help="the experiment's name (default: "
                                                                   "tina-NAME-<UTC time>-<4 hex>, unique per run)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command, do not run it")
    p.add_argument("--list", action="store_true", help="list the presets and the shared overlays they extend")
    p.add_argument("--params", default="params.yaml", help="params file the overlay is validated over")
    p.set_defaults(func=_run_recipe, dvc_args=[])
