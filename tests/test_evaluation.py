"""evaluation: records -> per-benchmark metrics with intervals and the paired test; compare table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

from tinyreason import evaluation, stats


def records(label, verdicts, bench="gsm8k", samples=None):
    out = []
    for i, v in enumerate(verdicts):
        for s, c in enumerate(samples[i] if samples else [v]):
            out.append({"model": label, "benchmark": bench, "id": f"p{i}", "sample": s, "correct": c,
                        "formatted": True, "num_tokens": 10, "truncated": False})
    return out


def test_metrics_hold_accuracy_wilson_interval_and_paired_mcnemar():
    base = records("base", [1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    adapter = records("adapter", [1, 1, 1, 1, 1, 0, 1, 1, 0, 0])
    metrics = evaluation.build_metrics({"base": base, "adapter": adapter}, samples=1)["gsm8k"]
    assert metrics["base"]["accuracy"] == pytest.approx(0.2) and metrics["adapter"]["accuracy"] == pytest.approx(0.7)
    lo, hi = stats.wilson_interval(7, 10)
    assert (metrics["adapter"]["accuracy_ci95_low"], metrics["adapter"]["accuracy_ci95_high"]) == (lo, hi)
    paired = metrics["adapter_vs_base"]
    assert paired["difference"] == pytest.approx(0.5)
    # 5 problems flipped to correct, none to wrong: exact McNemar = two-sided binomial on 5 discordant pairs.
    assert paired["p_value"] == pytest.approx(binomtest(0, 5, 0.5).pvalue)
    assert paired["ci_low"] < 0.5 < paired["ci_high"]


def test_mean_and_pass_at_k_with_several_samples():
    per_problem = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    recs = records("adapter", [None] * 3, samples=per_problem)
    summary = evaluation.summarise(recs, samples=4)
    assert summary["mean_at_4"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert summary["pass_at_4"] == pytest.approx(2 / 3)
    assert summary["accuracy"] == pytest.approx(2 / 3)  # sample 0


def test_compare_command_prints_a_table(tmp_path):
    metrics = evaluation.build_metrics({"base": records("base", [1, 0, 0, 1]),
                                        "adapter": records("adapter", [1, 1, 0, 1])}, samples=1)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    out = subprocess.run([sys.executable, "-m", "tinyreason.cli", "compare", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert "gsm8k" in out and "50.0%" in out and "75.0%" in out and "+25.0%" in out
    missing = subprocess.run([sys.executable, "-m", "tinyreason.cli", "compare", str(tmp_path / "nope.json")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.json: not found" in missing.stderr


def test_accuracy_datapoints_one_bar_per_benchmark_and_model():
    metrics = evaluation.build_metrics({"base": records("base", [1, 0]), "adapter": records("adapter", [1, 1])}, 1)
    assert evaluation.accuracy_datapoints(metrics) == [{"benchmark": "gsm8k (base)", "accuracy": 0.5},
                                                       {"benchmark": "gsm8k (adapter)", "accuracy": 1.0}]


def test_compare_help_prints_95_percent_once_escaped_nowhere():
    """argparse %-formats help strings but not descriptions: a description's `%%` was printed as is."""
    out = subprocess.run([sys.executable, "-m", "tinyreason.cli", "compare", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "95% intervals" in " ".join(out.split()) and "%%" not in out
    from tinyreason.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():  # every subcommand's help, as --help prints it
        assert "%%" not in sub.format_help(), name


def test_comparison_table_with_base_only_metrics():
    """evaluate.adapter: none writes only `base` per benchmark; the table shows it with dashes."""
    from rich.console import Console

    metrics = evaluation.build_metrics({"base": records("base", [1, 0, 0, 1])}, samples=1)
    console = Console(width=130, record=True)
    console.print(evaluation.comparison_table(metrics))
    row = next(line for line in console.export_text().splitlines() if "gsm8k" in line)
    assert "50.0%" in row and "4" in row and row.count("-") >= 3


def test_tiny_p_values_keep_full_precision_in_metrics_json(tmp_path):
    """McNemar's p for 0 vs 40 discordant pairs is 2 / 2**40: metrics.json keeps every digit (DVC's own
    `metrics show/diff` print 5 decimals, where it reads 0.0)."""
    from tinyreason.outputs import atomic_write_json

    metrics = evaluation.build_metrics({"base": records("base", [0] * 40), "adapter": records("adapter", [1] * 40)}, 1)
    atomic_write_json(tmp_path / "metrics.json", metrics)
    p = json.loads((tmp_path / "metrics.json").read_text())["gsm8k"]["adapter_vs_base"]["p_value"]
    assert p == 2 / 2 ** 40 and p != 0.0


def test_compare_reads_an_experiment_by_name(tmp_path):
    """`tinyreason compare --rev NAME`: the table of a run kept as a DVC experiment (run.sh's CPU run,
    `dvc exp run --temp`), without applying it to the checkout."""
    metrics = evaluation.build_metrics({"base": records("base", [0, 0, 0, 1]),
                                        "adapter": records("adapter", [1, 1, 0, 1])}, samples=1)
    (tmp_path / "metrics.src").write_text(json.dumps(metrics))
    (tmp_path / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: cp metrics.src metrics.json\n    deps: [metrics.src]\n"
                                       "    metrics:\n      - metrics.json:\n          cache: false\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "my-run"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, env=env)
    assert not (tmp_path / "metrics.json").exists()  # --temp: the checkout is untouched
    cli = [sys.executable, "-m", "tinyreason.cli", "compare", "--rev"]
    out = subprocess.run(cli + ["my-run"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "gsm8k" in out.stdout and "25.0%" in out.stdout and "75.0%" in out.stdout and "+50.0%" in out.stdout
    bad = subprocess.run(cli + ["no-such-run"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no-such-run" in bad.stderr, bad.stderr
