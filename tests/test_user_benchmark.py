"""A user's own test set under its own name (evaluate.benchmarks.<name>: {path, ...}).

Config validation (an unknown name without a path, keys that need a path), the loader (the user's field names,
bare or GSM8K-style answers, one-line errors naming file, field and fix), the leak check against the user's
set, and the prepare + evaluate stages on the tiny model with results labelled with the user's name.
"""

from __future__ import annotations

import json

import pytest

from conftest import make_workdir, run_stage, save_fresh_adapter, tiny_run_overrides, write_params
from tinyreason import benchmarks
from tinyreason.config import load_config
from tinyreason.errors import ConfigError, DataError

ROWS = [{"q": "A box holds 3 red and 4 blue balls. How many balls?", "a": "7"},
        {"q": "What is 6 times 7?", "a": "Six sevens: 6*7 = 42.\n#### 42", "id": "mult"},
        {"q": "What is one half plus one quarter?", "a": "\\frac{3}{4}"}]


def write_rows(path, rows=ROWS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mytest(path, **extra):
    return {"path": str(path), "prompt": "final_answer", "answer_format": "final_answer",
            "question_key": "q", "answer_key": "a", "limit": None, **extra}


def test_a_user_benchmark_loads_under_its_own_name(tmp_path):
    path = write_rows(tmp_path / "data" / "mytest.jsonl")
    cfg = load_config(write_params(tmp_path, {"evaluate": {"benchmarks": {"mytest": mytest(path)}}}))
    spec = cfg.evaluate.spec_of("mytest", "final_answer")
    problems = benchmarks.load_benchmark("mytest", path=cfg.evaluate.benchmarks["mytest"].path, spec=spec)
    assert [(p.benchmark, p.id, p.gold) for p in problems] == [
        ("mytest", "mytest-0", "7"), ("mytest", "mult", "42"), ("mytest", "mytest-2", "\\frac{3}{4}")]
    assert problems[1].solution.startswith("Six sevens") and problems[0].solution == ""
    assert problems[0].question == ROWS[0]["q"] and problems[0].answer_format == "final_answer"


def test_default_field_names_and_answer_format_from_the_prompt(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [{"question": "2+2?", "answer": "4"}])
    cfg = load_config(write_params(tmp_path, {"evaluate": {"benchmarks": {
        "mine": {"path": str(path), "prompt": "boxed"}}}}))
    spec = cfg.evaluate.spec_of("mine", cfg.prompt("boxed").answer_format)
    (problem,) = benchmarks.load_benchmark("mine", path=str(path), spec=spec)
    assert (problem.question, problem.gold, problem.answer_format) == ("2+2?", "4", "boxed")


@pytest.mark.parametrize("benchmark, key, fragment", [
    ({"gsm8kk": {"prompt": "final_answer"}}, "evaluate.benchmarks.gsm8kk", "did you mean 'gsm8k'?"),
    ({"mytest": {"prompt": "final_answer"}}, "evaluate.benchmarks.mytest", "path: data/mytest.jsonl"),
    ({"gsm8k": {"prompt": "final_answer", "question_key": "q"}}, "evaluate.benchmarks.gsm8k.question_key",
     "set evaluate.benchmarks.gsm8k.path"),
    ({"mytest": {"path": "x.jsonl", "answer_format": "number"}}, "evaluate.benchmarks.mytest.answer_format",
     "not one of final_answer, boxed, choice"),
])
def test_config_errors_name_the_key_and_the_fix(tmp_path, benchmark, key, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(write_params(tmp_path, {"evaluate": {"benchmarks": benchmark}}))
    message = str(exc.value)
    assert key in message and fragment in message and "\n" not in message


@pytest.mark.parametrize("rows, fragment", [
    ([{"question": "2+2?", "a": "4"}], "no question field 'q' (fix: set evaluate.benchmarks.mytest.question_key"),
    ([{"q": "2+2?", "answer": "4"}], "no answer field 'a' (fix: set evaluate.benchmarks.mytest.answer_key"),
    ([{"q": "2+2?", "a": "#### 4"}], "'a' has '####' but no reasoning"),
])
def test_loader_errors_name_file_line_field_and_fix(tmp_path, rows, fragment):
    path = write_rows(tmp_path / "mytest.jsonl", [{"q": "1+1?", "a": "2"}] + rows)
    cfg = load_config(write_params(tmp_path, {"evaluate": {"benchmarks": {"mytest": mytest(path)}}}))
    with pytest.raises(DataError) as exc:
        benchmarks.load_benchmark("mytest", path=str(path), spec=cfg.evaluate.spec_of("mytest", "final_answer"))
    message = str(exc.value)
    assert f"{path}:2:" in message and fragment in message and "\n" not in message


def test_choice_benchmark_needs_letters(tmp_path):
    path = write_rows(tmp_path / "mc.jsonl", [{"question": "Pick one\nA) 1\nB) 2", "answer": "b"},
                                              {"question": "Again\nA) 1\nB) 2", "answer": "7"}])
    spec = benchmarks.user_spec("mc", str(path), "choice")
    with pytest.raises(DataError, match=r"mc.jsonl:2: answer '7' is not a letter A-D"):
        benchmarks.load_benchmark("mc", path=str(path), spec=spec)
    assert benchmarks.load_benchmark("mc", path=str(path), spec=spec, limit=1)[0].gold == "B"


def test_prepare_refuses_training_on_the_users_test_set(tmp_path, tiny_model_dir):
    """The one leak check covers the user's own set too (and every vendored benchmark)."""
    work = make_workdir(tmp_path)
    train = [json.loads(line) for line in (work / "data/raw/gsm8k/train.jsonl").read_text().splitlines()[:30]]
    write_rows(work / "data" / "mytest.jsonl", [{"q": train[5]["question"].upper(), "a": "1"}])
    (work / "data" / "train30.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    write_params(work, tiny_run_overrides(
        tiny_model_dir, prepare={"train_path": "data/train30.jsonl", "num_samples": 30, "val_fraction": 0.2},
        evaluate={"benchmarks": {"mytest": mytest("data/mytest.jsonl")}}))
    proc = run_stage(work, "prepare")
    assert proc.returncode != 0
    assert "1 training question(s) also appear in the test benchmarks" in proc.stderr and "(mytest)" in proc.stderr


@pytest.mark.slow
def test_prepare_and_evaluate_label_results_with_the_users_name(tmp_path, tiny_model_dir):
    work = make_workdir(tmp_path)
    write_rows(work / "data" / "mytest.jsonl")
    write_params(work, tiny_run_overrides(tiny_model_dir, evaluate={
        "max_new_tokens": 4, "benchmarks": {"mytest": mytest("data/mytest.jsonl", limit=2),
                                            "gsm8k": {"limit": 1, "prompt": "final_answer"}}}))
    proc = run_stage(work, "prepare")
    assert proc.returncode == 0, proc.stderr[-2000:]
    test_rows = [json.loads(line) for line in (work / "data/prepared/test.jsonl").read_text().splitlines()]
    mine = [r for r in test_rows if r["benchmark"] == "mytest"]
    assert [(r["id"], r["gold"], r["answer_format"]) for r in mine] == [("mytest-0", "7", "final_answer"),
                                                                       ("mult", "42", "final_answer")]
    assert ROWS[0]["q"] in mine[0]["prompt"]
    save_fresh_adapter(tiny_model_dir, work / "models" / "adapter")
    for stage in ("evaluate_base", "evaluate"):
        proc = run_stage(work, stage)
        assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((work / "metrics.json").read_text())
    assert sorted(metrics) == ["gsm8k", "mytest"]
    assert metrics["mytest"]["adapter"]["n"] == 2 and metrics["mytest"]["base"]["n"] == 2
    preds = [json.loads(line) for line in (work / "predictions" / "mytest.jsonl").read_text().splitlines()]
    assert {(p["model"], p["id"], p["gold"]) for p in preds} == {
        (m, i, g) for m in ("base", "adapter") for i, g in (("mytest-0", "7"), ("mult", "42"))}
    assert "mytest" in proc.stdout
