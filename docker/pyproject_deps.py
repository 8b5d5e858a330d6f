"""Print the requirements of pyproject.toml ([project].dependencies plus the named extras), one per line.

Used by docker/Dockerfile and scripts/make-wheelhouse.sh so that the image installs exactly what
`pip install -c requirements/constraints.txt -e .[extras]` installs on the host, with the versions
coming from requirements/constraints.txt only (this prints the unpinned ranges from pyproject).

    python3 docker/pyproject_deps.py pyproject.toml --extras gpu,dev
"""

from __future__ import annotations

import argparse
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject_deps: no extra {extra!r} in {pyproject} (have: {', '.join(optional)})")
        reqs += optional[extra]
    # An extra may name the project itself (tinyreason[gpu]); the project is installed separately.
    name = project["name"]
    return [r for r in dict.fromkeys(reqs) if not r.replace("_", "-").lower().startswith(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--extras", default="", help="comma or space separated extras")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.replace(",", " ").split() if e]
    sys.stdout.write("".join(r + "\n" for r in requirements(args.pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
