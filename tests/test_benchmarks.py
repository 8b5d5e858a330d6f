"""Benchmark registry and loaders: vendored files, one-line errors, hub path (faked), GPQA shuffling (faked hub)."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from tinyreason import benchmarks
from tinyreason.benchmarks import (
    BENCHMARKS,
    REPO_ROOT,
    BenchmarkSpec,
    Problem,
    load_benchmark,
    shuffle_choices,
)
from tinyreason.errors import DataError, TinyReasonError

VENDORED = {"addition": 32, "gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272}


# ------------------------------------------------------------------------------------------------ registry

def test_registry_specs():
    assert set(VENDORED) | {"gpqa_diamond"} == set(BENCHMARKS)
    for name, spec in BENCHMARKS.items():
        assert isinstance(spec, BenchmarkSpec) and spec.name == name
        assert spec.answer_format in ("final_answer", "boxed", "choice")
        assert spec.hub_id or name == "addition"  # addition is generated here (tinyreason/addition.py)
    assert BENCHMARKS["gsm8k"].answer_format == "final_answer"
    assert BENCHMARKS["math500"].answer_format == "boxed"
    assert BENCHMARKS["gpqa_diamond"].answer_format == "choice"
    assert BENCHMARKS["gpqa_diamond"].path is None  # never vendored
    assert BENCHMARKS["minerva_math"].numeric_tolerance == pytest.approx(1e-2)
    assert BENCHMARKS["math500"].numeric_tolerance is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        BENCHMARKS["gsm8k"].path = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(VENDORED))
def test_vendored_data_has_license_and_source(name):
    spec = BENCHMARKS[name]
    folder = (REPO_ROOT / spec.path).parent
    assert folder == REPO_ROOT / "data" / "benchmarks" / name
    assert (folder / "LICENSE").read_text().strip()
    assert "upstream" in (folder / "SOURCE.md").read_text().lower()
    assert (REPO_ROOT / "data/raw/gsm8k/train.jsonl").is_file()
    assert (REPO_ROOT / "data/raw/gsm8k/LICENSE").is_file()


@pytest.mark.parametrize("name, count", sorted(VENDORED.items()))
def test_load_vendored(name, count):
    problems = load_benchmark(name)
    assert len(problems) == count
    assert all(isinstance(p, Problem) for p in problems)
    assert len({p.id for p in problems}) == count  # ids are unique
    for p in problems:
        assert p.benchmark == name and p.answer_format == BENCHMARKS[name].answer_format
        assert p.question.strip() and p.gold.strip() and isinstance(p.id, str)
    has_solutions = {"addition", "gsm8k", "math500", "aime24", "minerva_math"}
    assert all(p.solution for p in problems) == (name in has_solutions)
    if name not in has_solutions:
        assert all(p.solution == "" for p in problems)


def test_gsm8k_fields():
    problems = load_benchmark("gsm8k")
    first = problems[0]
    assert first.id == "gsm8k-0"
    assert first.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert first.gold == "18"
    assert first.solution.endswith("$18 every day at the farmer’s market.")
    assert all("<<" not in p.solution and "####" not in p.solution for p in problems)
    assert all("," not in p.gold for p in problems)  # 14 golds are written '#### 2,125' upstream
    assert all(p.gold.lstrip("-").isdigit() for p in problems)


def test_gsm8k_test_not_in_train():
    train = {json.loads(line)["question"] for line in (REPO_ROOT / "data/raw/gsm8k/train.jsonl").open()}
    assert len(train) > 7000
    assert not train & {p.question for p in load_benchmark("gsm8k")}


def test_math_sets_fields():
    math500 = load_benchmark("math500")
    assert math500[0].id == "test/precalculus/807.json"
    assert math500[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_benchmark("aime24")[0].gold == "204" and load_benchmark("aime24")[0].id == "2024-I-1"
    assert load_benchmark("amc23")[0].id == "0"
    assert load_benchmark("minerva_math")[1].gold == "4.5e33"


def test_limit_takes_first_n_in_file_order():
    full = load_benchmark("math500")
    assert load_benchmark("math500", limit=7) == full[:7]
    assert load_benchmark("math500", limit=7) == load_benchmark("math500", limit=7)
    assert len(load_benchmark("aime24", limit=1000)) == 30
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TinyReasonError, match="limit"):
            load_benchmark("gsm8k", limit=bad)


def test_explicit_local_path(tmp_path):
    src = REPO_ROOT / BENCHMARKS["amc23"].path
    copy = tmp_path / "amc.jsonl"
    copy.write_text("".join(src.read_text().splitlines(keepends=True)[:3]) + "\n")  # a blank line is skipped
    problems = load_benchmark("amc23", path=str(copy))
    assert [p.gold for p in problems] == ["27", "36", "45"]
    assert load_benchmark("amc23", path=copy) == problems  # Path works too


# ------------------------------------------------------------------------------------------------ errors

def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(TinyReasonError) as exc:
        load_benchmark("gsm9k")
    message = _one_line(exc)
    assert "gsm9k" in message
    for name in BENCHMARKS:
        assert name in message


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as exc:
        load_benchmark("math500", path=str(missing))
    assert str(missing) in _one_line(exc)


def test_malformed_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n')
    with pytest.raises(DataError) as exc:
        load_benchmark("math500", path=str(bad))
    assert f"{bad}:2" in _one_line(exc)


@pytest.mark.parametrize("row, field", [
    ({"answer": "2"}, "question"),
    ({"problem": "1+1?"}, "answer"),
    ({"problem": "1+1?", "answer": "  "}, "answer"),
])
def test_missing_fields_are_named(tmp_path, row, field):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"problem": "ok?", "answer": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as exc:
        load_benchmark("aime24", path=str(bad))
    message = _one_line(exc)
    assert f"{bad}:2" in message and field in message


def test_gsm8k_row_without_hashes(tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "reasoning only, 5"}) + "\n")
    with pytest.raises(DataError, match="####") as exc:
        load_benchmark("gsm8k", path=str(bad))
    assert f"{bad}:1" in _one_line(exc)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no problems"):
        load_benchmark("math500", path=str(empty))


# ------------------------------------------------------------------------------------------------ hub (faked)

class _FakeHub:
    def __init__(self, rows=None, error=None):
        self.rows, self.error, self.calls = rows, error, []

    def __call__(self, hub_id, config=None, split=None):
        self.calls.append((hub_id, config, split))
        if self.error is not None:
            raise self.error
        return self.rows


def test_hub_dataset_id_uses_load_dataset(monkeypatch):
    import datasets

    fake = _FakeHub(rows=[{"problem": "What is 1+1?", "answer": 2.0, "id": 7}, {"problem": "3?", "answer": "3"}])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    problems = load_benchmark("amc23", path="math-ai/amc23")
    assert fake.calls == [("math-ai/amc23", None, "test")]
    assert [(p.id, p.gold) for p in problems] == [("7", "2"), ("amc23-1", "3")]  # 2.0 -> "2"
    fake2 = _FakeHub(rows=[{"question": "q", "answer": "r\n#### 4"}])
    monkeypatch.setattr(datasets, "load_dataset", fake2)
    assert load_benchmark("gsm8k", path="openai/gsm8k")[0].gold == "4"
    assert fake2.calls == [("openai/gsm8k", "main", "test")]
    load_benchmark("gsm8k", path="someone/gsm-copy:socratic")
    assert fake2.calls[-1] == ("someone/gsm-copy", "socratic", "test")


def test_hub_unreachable_is_one_line(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _FakeHub(error=ConnectionError("Couldn't reach\n'hf.co'")))
    with pytest.raises(DataError) as exc:
        load_benchmark("math500", path="HuggingFaceH4/MATH-500")
    message = _one_line(exc)
    assert "HuggingFaceH4/MATH-500" in message and "ConnectionError" in message
    assert "data/benchmarks/math500/test.jsonl" in message  # points at the vendored copy


# ------------------------------------------------------------------------------------------------ GPQA (faked hub)

def _gpqa_rows(count=40):
    return [{"Question": f"Question {i}: which is right? ", "Correct Answer": f"right {i}",
             "Incorrect Answer 1": f"wrong1 {i}", "Incorrect Answer 2": f"wrong2 {i}\n",
             "Incorrect Answer 3": f"wrong3 {i}", "Record ID": f"rec{i}", "Explanation": f"because {i}"}
            for i in range(count)]


def test_gpqa_rendering_and_gold(monkeypatch):
    import datasets

    fake = _FakeHub(rows=_gpqa_rows())
    monkeypatch.setattr(datasets, "load_dataset", fake)
    problems = load_benchmark("gpqa_diamond", seed=3)
    assert fake.calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")]
    assert len(problems) == 40
    for i, p in enumerate(problems):
        lines = p.question.split("\n")
        assert lines[0] == f"Question {i}: which is right?" and lines[1] == ""
        assert [line[:3] for line in lines[2:]] == ["A) ", "B) ", "C) ", "D) "]
        options = {line[0]: line[3:] for line in lines[2:]}
        assert options[p.gold] == f"right {i}"  # the gold letter points at the correct answer
        assert sorted(options.values()) == sorted([f"right {i}", f"wrong1 {i}", f"wrong2 {i}", f"wrong3 {i}"])
        assert p.answer_format == "choice" and p.id == f"rec{i}" and p.solution == f"because {i}"
    letters = Counter(p.gold for p in problems)
    assert set(letters) == {"A", "B", "C", "D"}  # really shuffled, not always A


def test_gpqa_shuffle_is_deterministic(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _FakeHub(rows=_gpqa_rows()))
    a = load_benchmark("gpqa_diamond", seed=3)
    assert load_benchmark("gpqa_diamond", seed=3) == a
    assert load_benchmark("gpqa_diamond", seed=3, limit=5) == a[:5]  # limit does not move letters
    b = load_benchmark("gpqa_diamond", seed=4)
    assert [p.gold for p in a] != [p.gold for p in b]
    # pinned: the order is a function of (seed, index) only, stable across runs and Python versions
    assert shuffle_choices("R", ["w1", "w2", "w3"], seed=0, index=0) == shuffle_choices("R", ["w1", "w2", "w3"], 0, 0)
    assert [shuffle_choices("R", ["w1", "w2", "w3"], 0, i)[1] for i in range(8)] == \
        [load_benchmark("gpqa_diamond", seed=0)[i].gold for i in range(8)]


@pytest.mark.parametrize("error", [
    ConnectionError("offline"),
    Exception("Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub. You must be authenticated to access it."),
])
def test_gpqa_unavailable_says_how_to_get_access(monkeypatch, error):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _FakeHub(error=error))
    with pytest.raises(DataError) as exc:
        load_benchmark("gpqa_diamond")
    message = _one_line(exc)
    assert "hf auth login" in message
    assert "https://huggingface.co/datasets/Idavidrein/gpqa" in message and "terms" in message


def test_gpqa_missing_field(monkeypatch):
    import datasets

    rows = _gpqa_rows(2)
    del rows[1]["Incorrect Answer 3"]
    monkeypatch.setattr(datasets, "load_dataset", _FakeHub(rows=rows))
    with pytest.raises(DataError, match="Incorrect Answer 3") as exc:
        load_benchmark("gpqa_diamond")
    assert "row 1" in _one_line(exc)


def test_gpqa_from_a_local_export(tmp_path):
    export = tmp_path / "gpqa.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in _gpqa_rows(3)))
    problems = load_benchmark("gpqa_diamond", path=str(export), seed=1)
    assert len(problems) == 3 and all(p.gold in "ABCD" for p in problems)


def test_benchmark_names():
    assert benchmarks.benchmark_names() == list(BENCHMARKS)
    assert isinstance(REPO_ROOT, Path)
