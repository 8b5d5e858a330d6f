"""GRPO while it trains: held-out training problems scored every eval_steps with the evaluate stage's grader
(DVCLive curves, in the log history), and a few sampled completions per logging step in a JSONL file."""

from __future__ import annotations

import json

import pytest

from test_grpo import one_thread, toy_config, toy_setup  # noqa: F401 - fixtures
from tinyreason import monitoring
from tinyreason.errors import DataError


def test_hold_out_is_a_seeded_slice_of_the_training_rows():
    rows = [{"question": str(i), "answer": str(i)} for i in range(10)]
    train, held = monitoring.hold_out(rows, 3, seed=1)
    assert len(held) == 3 and len(train) == 7 and sorted(train + held, key=lambda r: int(r["question"])) == rows
    assert monitoring.hold_out(rows, 3, seed=1) == (train, held)  # reproducible
    assert monitoring.hold_out(rows, 0, seed=1) == (rows, [])
    with pytest.raises(DataError, match="train.grpo.held_out=10 leaves none"):
        monitoring.hold_out(rows, 10, seed=1)


def test_grpo_run_logs_held_out_scores_and_sampled_completions(toy_setup, one_thread, tmp_path):  # noqa: F811
    from dvclive import Live

    from tinyreason.grpo import train_grpo

    root, model_dir, train_path = toy_setup
    # 6 toy problems: 2 held out, 4 trained on; scored at steps 2 and 3 (eval_steps 2, then the end)
    cfg = toy_config(model_dir, train_path, 3, train={"eval_steps": 2, "save_steps": 2, "per_device_train_batch_size": 8},
                     held_out=2, reward_funcs=["format", "accuracy"], reward_weights=[1.0, 1.0])
    live_dir = tmp_path / "dvclive"
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        result = train_grpo(cfg, train_path, tmp_path / "ckpt", live=live)
    assert result.metrics["train_problems"] == 4
    scored = [e for e in result.trainer.state.log_history if "eval_heldout/accuracy" in e]
    assert [e["step"] for e in scored] == [2, 3]
    for entry in scored:
        assert 0.0 <= entry["eval_heldout/accuracy"] <= 1.0 and 0.0 <= entry["eval_heldout/format_rate"] <= 1.0
        assert 1 <= entry["eval_heldout/mean_length"] <= 8  # the toy's 8-token budget
    assert set(result.metrics["final_heldout"]) == {"accuracy", "format_rate", "mean_length", "truncated_rate"}
    header, *points = [line.split("\t") for line in
                       (live_dir / "plots/metrics/eval/heldout/accuracy.tsv").read_text().splitlines()]
    assert header[-2:] == ["step", "accuracy"] and [p[-2] for p in points] == ["2", "3"]
    rows = [json.loads(line) for line in (live_dir / monitoring.COMPLETIONS_FILE).read_text().splitlines()]
    assert {r["step"] for r in rows} == {1, 2, 3}  # logging_steps 1
    assert all(len([r for r in rows if r["step"] == s]) == monitoring.SAMPLES_PER_LOG for s in (1, 2, 3))
    for row in rows:
        assert isinstance(row["completion"], str) and row["answer"] == "a" and row["prompt"]
        assert set(row["rewards"]) == {"format", "accuracy"}
    # the rewards kept are the ones TRL logged for that batch's functions, under the same names
    assert "rewards/format/mean" in result.trainer.state.log_history[0]
