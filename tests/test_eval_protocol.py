"""Tina's evaluation protocol (recipes/eval-tina.yaml) and what it needs.

- metrics: truncated_rate and mean_output_tokens over every sample; mean@k / pass@k per benchmark with
  that benchmark's own k (evaluate.benchmarks.<name>.samples);
- config: per-benchmark samples, a null benchmark is off, evaluate.batch_size may be null;
- the eval-tina overlay, turned into `dvc exp run -S` flags and applied by DVC's own override code,
  loads through tinyreason.config.load_config with Tina's values, for the overlay and for every preset;
- the evaluate stage end to end on the tiny random model with outputs cut at the cap.
"""

from __future__ import annotations

import json

import pytest

from conftest import make_workdir, run_stage, save_fresh_adapter, shipped_params_path, tiny_run_overrides, write_params
from tinyreason import evaluation
from tinyreason.config import load_config
from tinyreason.errors import ConfigError


def record(bench, pid, sample, correct, num_tokens, truncated, label="adapter"):
    return {"model": label, "benchmark": bench, "id": pid, "sample": sample, "correct": correct,
            "formatted": True, "num_tokens": num_tokens, "truncated": truncated}


# ---------------------------------------------------------------------------------------------
# Metrics from hand-built records


def test_truncated_rate_and_mean_output_tokens_count_every_sample():
    recs = [record("aime24", "p0", 0, True, 100, False), record("aime24", "p0", 1, False, 512, True),
            record("aime24", "p1", 0, False, 512, True), record("aime24", "p1", 1, False, 512, True)]
    s = evaluation.summarise(recs, samples=2)
    assert s["truncated_rate"] == pytest.approx(3 / 4)  # all samples, not only sample 0 (1/2 there)
    assert s["mean_output_tokens"] == pytest.approx((100 + 512 * 3) / 4)
    assert s["accuracy"] == pytest.approx(1 / 2) and s["mean_at_2"] == pytest.approx((0.5 + 0) / 2)
    assert s["pass_at_2"] == pytest.approx(1 / 2)


def test_each_benchmark_gets_mean_and_pass_at_its_own_k():
    recs = [record("aime24", f"p{i}", s, c, 50, False)
            for i, verdicts in enumerate([[1, 0, 0, 1], [0, 0, 0, 0]]) for s, c in enumerate(verdicts)]
    recs += [record("math500", "m0", 0, True, 20, False), record("math500", "m1", 0, False, 64, True)]
    base = [dict(r, model="base", correct=False) for r in recs]
    metrics = evaluation.build_metrics({"base": base, "adapter": recs}, {"aime24": 4, "math500": 1})
    aime, math = metrics["aime24"]["adapter"], metrics["math500"]["adapter"]
    assert aime["mean_at_4"] == pytest.approx((2 / 4 + 0) / 2) and aime["pass_at_4"] == pytest.approx(1 / 2)
    assert not any(k.startswith(("mean_at", "pass_at")) for k in math)  # one sample: no mean@k
    assert math["truncated_rate"] == pytest.approx(1 / 2) and math["mean_output_tokens"] == pytest.approx(42)
    assert aime["truncated_rate"] == 0.0 and metrics["aime24"]["base"]["mean_at_4"] == 0.0
    # the paired test stays on sample 0 of each problem
    assert metrics["aime24"]["adapter_vs_base"]["n"] == 2


# ---------------------------------------------------------------------------------------------
# Config: per-benchmark samples, null = off, batch_size null


def load(tmp_path, overrides):
    return load_config(write_params(tmp_path, overrides))


def test_per_benchmark_samples_default_to_evaluate_samples(tmp_path):
    cfg = load(tmp_path, {"evaluate": {"temperature": 0.6, "samples": 2, "batch_size": None, "benchmarks": {
        "aime24": {"limit": None, "prompt": "boxed", "samples": 8},
        "math500": {"limit": 5, "prompt": "boxed"}, "gsm8k": None}}})
    e = cfg.evaluate
    assert sorted(e.benchmarks) == ["aime24", "math500"]  # gsm8k: null is off
    assert (e.samples_of("aime24"), e.samples_of("math500"), e.batch_size) == (8, 2, None)


@pytest.mark.parametrize("evaluate, key, fragment", [
    ({"temperature": 0.0, "benchmarks": {"aime24": {"prompt": "boxed", "samples": 4}}},
     "evaluate.benchmarks.aime24.samples", "temperature > 0"),
    ({"temperature": 0.6, "benchmarks": {"aime24": {"prompt": "boxed", "samples": 0}}},
     "evaluate.benchmarks.aime24.samples", "out of range"),
    ({"benchmarks": {"gsm8k": None}}, "evaluate.benchmarks", "every benchmark is off"),
    ({"batch_size": 0}, "evaluate.batch_size", "out of range"),
])
def test_bad_evaluate_params_are_one_line(tmp_path, evaluate, key, fragment):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"evaluate": evaluate})
    message = str(info.value)
    assert "\n" not in message and f"params.yaml: {key}:" in message and fragment in message, message
    assert "fix" in message or "out of range" in message


def test_shipped_params_batch_size_means_requests_in_flight():
    """GPU default null (the engine decides, as before); the CPU profile keeps its HF batch of 16."""
    assert load_config(shipped_params_path()).evaluate.batch_size is None
    assert load_config(shipped_params_path(), profile="cpu").evaluate.batch_size == 16


# ---------------------------------------------------------------------------------------------
# The eval-tina overlay through `dvc exp run -S` (DVC's own override code) and load_config

TINA_SAMPLES = {"aime24": 10, "aime25": 10, "amc23": 10, "math500": 1, "minerva_math": 1}


def applied(tmp_path, name):
    """Shipped params + the recipe's -S flags applied by DVC -> the config DVC's run would read."""
    from dvc.utils.hydra import apply_overrides

    from tinyreason import recipes

    (tmp_path / name).mkdir()
    params = write_params(tmp_path / name, {})
    cmd = recipes.recipe_command(name, params)
    apply_overrides(params, [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"])
    return load_config(params), cmd


def assert_tina_protocol(cfg):
    e = cfg.evaluate
    assert (e.max_new_tokens, e.temperature, e.top_p, e.samples) == (32768, 0.6, 0.95, 1)
    assert {name: e.samples_of(name) for name in e.benchmarks} == TINA_SAMPLES  # gsm8k off, gpqa opt-in
    assert {run.prompt for run in e.benchmarks.values()} == {"tina_math"}
    assert all(run.limit is None for run in e.benchmarks.values())
    prompt = cfg.prompt("tina_math")
    user = prompt.user_template.format(question="What is 1+1?")
    assert user.startswith("Solve the following math problem efficiently and clearly.  The last line")
    assert "'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct'" in user
    assert user.endswith("Think step by step before answering.\n\nWhat is 1+1?")
    assert prompt.system is None and prompt.think_prefix == "" and prompt.answer_format == "boxed"


def test_eval_tina_overlay_loads_with_tinas_protocol(tmp_path):
    cfg, cmd = applied(tmp_path, "eval-tina")
    assert_tina_protocol(cfg)
    assert "-S" in cmd and "+evaluate.benchmarks.aime24.samples=10" in cmd  # a key params lacks: `+`
    assert "evaluate.benchmarks.gsm8k=null" in cmd
    assert cfg.model.name_or_path == load_config(shipped_params_path()).model.name_or_path  # eval only


def test_every_tina_preset_extends_the_eval_overlay(tmp_path):
    from tinyreason import recipes

    assert recipes.overlay_names() == ["eval-tina", "tina-base"]
    assert "eval-tina" not in recipes.recipe_names() and "tina-base" not in recipes.recipe_names()
    for name in recipes.recipe_names():
        eval_params = recipes.load_recipe(name)["params"]["evaluate"]
        assert eval_params == recipes.load_recipe("eval-tina")["params"]["evaluate"], name
    cfg, _ = applied(tmp_path, "open-rs3")  # one preset all the way through DVC
    assert_tina_protocol(cfg)
    assert cfg.train.method == "grpo" and cfg.model.name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def test_recipe_list_shows_presets_then_overlays(capsys):
    from tinyreason.cli import main

    assert main(["recipe", "--list"]) == 0
    out = capsys.readouterr().out
    presets, overlays = out.split("shared overlays")
    assert "open-rs3" in presets and "eval-tina" not in presets
    assert "eval-tina" in overlays and "tina-base" in overlays
    assert main(["recipe", "eval-tina", "--dry-run", "--params", str(shipped_params_path())]) == 0
    assert "-S evaluate.max_new_tokens=32768" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The evaluate stage end to end, every output cut at the cap


@pytest.mark.slow
def test_evaluate_stage_records_lengths_truncation_and_per_benchmark_samples(tmp_path, tiny_model_dir):
    """Tiny random model, 3 new tokens: every output hits the cap. aime24 takes 3 samples, gsm8k 1."""
    work = make_workdir(tmp_path)
    cap = 3
    write_params(work, tiny_run_overrides(tiny_model_dir, evaluate={
        "max_new_tokens": cap, "batch_size": 4, "temperature": 0.6, "top_p": 0.95, "samples": 1,
        "benchmarks": {"gsm8k": {"limit": 2, "prompt": "final_answer"},
                       "aime24": {"limit": 2, "prompt": "tina_math", "samples": 3}}}))
    proc = run_stage(work, "prepare")
    assert proc.returncode == 0, proc.stderr[-2000:]
    save_fresh_adapter(tiny_model_dir, work / "models" / "adapter")
    for stage in ("evaluate_base", "evaluate"):
        proc = run_stage(work, stage)
        assert proc.returncode == 0, proc.stderr[-2000:]

    metrics = json.loads((work / "metrics.json").read_text())
    for bench, k in (("gsm8k", 1), ("aime24", 3)):
        preds = [json.loads(line) for line in (work / "predictions" / f"{bench}.jsonl").read_text().splitlines()]
        for label in ("base", "adapter"):
            mine = [p for p in preds if p["model"] == label]
            assert sorted((p["id"], p["sample"]) for p in mine) == sorted(
                (pid, s) for pid in {p["id"] for p in mine} for s in range(k)), (bench, label)
            assert len({p["id"] for p in mine}) == 2
            for p in mine:
                assert {"id", "sample", "num_tokens", "truncated", "extracted", "correct", "output"} <= set(p)
                assert p["num_tokens"] == cap and p["truncated"] is True, p
            m = metrics[bench][label]
            assert m["truncated_rate"] == 1.0 and m["mean_output_tokens"] == cap
            assert ("mean_at_3" in m) == (k == 3) and ("pass_at_3" in m) == (k == 3)
        # Issue 26: the fresh adapter (B = 0) is the base model, and evaluate samples it in its own process
        # after evaluate_base sampled the base model in another: the same seeds give the same answers.
        answers = {label: {(p["id"], p["sample"]): p["output"] for p in preds if p["model"] == label}
                   for label in ("base", "adapter")}
        assert answers["base"] == answers["adapter"], bench
    aime = answers["base"]  # the last benchmark's, aime24: its 3 samples really differ
    assert any(len({aime[pid, s] for s in range(3)}) > 1 for pid, _ in aime)
