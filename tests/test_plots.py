"""`dvc plots show/diff` after either method's run report no plot as missing, and the page
they write draws offline (vega, vega-lite and vega-embed inlined; no CDN)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from tinyreason import tracking

DVC = [sys.executable, "-m", "dvc"]


def plotted_files() -> set[str]:
    files = set()
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        (definition,) = entry.values()
        files |= set(definition["y"])
    return files


def test_dvc_yaml_plots_exactly_the_curves_the_train_stage_guarantees():
    curves = {f"dvclive/train/plots/metrics/{name}.tsv" for name in tracking.PLOTTED_CURVES}
    assert {f for f in plotted_files() if f.startswith("dvclive/train/")} == curves


def test_write_empty_curves_fills_only_what_the_run_did_not_log(tmp_path):
    loss = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    loss.parent.mkdir(parents=True)
    loss.write_text("timestamp\tstep\tloss\n1\t1\t0.5\n")
    written = tracking.write_empty_curves(tmp_path)
    assert "train/loss" not in written and set(written) == set(tracking.PLOTTED_CURVES) - {"train/loss"}
    assert loss.read_text().endswith("0.5\n")  # a logged curve is left as it is
    kl = tmp_path / "plots" / "metrics" / "train" / "kl.tsv"
    assert kl.read_text() == "timestamp\tstep\tkl\n"


def sft_run_outputs(root: Path) -> None:
    """What an SFT run leaves for the plots: its DVCLive curves (no GRPO keys) and the accuracy bars."""
    metrics = root / "dvclive" / "train" / "plots" / "metrics"
    for name, rows in (("train/loss", [(1, 1.2), (2, 0.3)]), ("eval/loss", [(2, 0.4)]),
                       ("train/learning_rate", [(1, 0.001), (2, 0.002)])):
        path = metrics / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        leaf = name.rsplit("/", 1)[-1]
        path.write_text(f"timestamp\tstep\t{leaf}\n" + "".join(f"0\t{s}\t{v}\n" for s, v in rows))
    bars = root / "dvclive" / "eval" / "plots" / "custom" / "accuracy.json"
    bars.parent.mkdir(parents=True)
    bars.write_text(json.dumps([{"benchmark": "addition (base)", "accuracy": 0.0},
                                {"benchmark": "addition (adapter)", "accuracy": 0.9}]))


def test_dvc_plots_show_after_an_sft_run_loads_every_plot_and_draws_offline(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=repo, check=True, env=env)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # plots.html_template
    shutil.copytree(REPO / "third_party", repo / "third_party")
    shipped = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": shipped["plots"]}, sort_keys=False))
    sft_run_outputs(repo)
    tracking.write_empty_curves(repo / "dvclive" / "train")  # what the train stage does at its end

    shown = subprocess.run([*DVC, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "failed to load" not in shown.stdout + shown.stderr
    data = json.loads(shown.stdout)
    assert not data.get("errors"), data.get("errors")
    names = {next(iter(entry)) for entry in shipped["plots"]}
    assert names <= set(data["data"])
    assert data["data"]["training loss"] and data["data"]["accuracy per benchmark"]

    html = subprocess.run([*DVC, "plots", "show"], cwd=repo, capture_output=True, text=True, env=env)
    assert html.returncode == 0 and "failed to load" not in html.stdout + html.stderr, html.stderr
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page  # nothing fetched from the network
    assert "vegaEmbed(" in page and page.count("vega-lite") >= 1 and "training loss" in page
