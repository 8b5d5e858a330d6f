"""Each concept in one obvious place (README "Architecture" lists the modules):

- benchmarks.py owns GSM8K answer parsing, question keys and the one training-vs-test leak check, which
  prepare and GRPO both run with the same scope (every vendored benchmark, plus the run's own test sets);
  benchmarks.py does not import data.py;
- formats.py owns the answer vocabulary (format names, think tags, the final-answer marker) and
  rewards.REWARDS the reward names, which config, tracking and dvc.yaml's plots read;
- checkpoints.py owns the run directory of both methods, training.py what SFT and GRPO share, and grpo.py
  imports nothing from sft.py; paths.py spells the pipeline's files, sources.py reads JSONL and hub sets;
- bench/common.py holds the Qwen2.5-1.5B shape for every bench script and test;
- recipes/*.yaml are read through config.py (no other module reads YAML).
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from conftest import REPO, SMOLLM_MODEL, write_params
from tinyreason import benchmarks, config, formats, grading, rewards
from tinyreason.errors import ConfigError, DataError

MODULES = sorted((REPO / "tinyreason").rglob("*.py"))
CODE = MODULES + sorted((REPO / "stages").glob("*.py"))


def code_strings(path) -> list[str]:
    """The string constants of a file, docstrings left out (prose may name a concept)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def spelled_outside(owner: str, found) -> list[str]:
    """Files other than `owner` (repo-relative) with a string constant for which `found(text)` holds."""
    return sorted({p.relative_to(REPO).as_posix() for p in CODE
                   if p.relative_to(REPO).as_posix() != owner and any(found(t) for t in code_strings(p))})


def imports_of(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_benchmarks_does_not_import_data():
    assert not any(name.startswith("tinyreason.data") for name in imports_of(REPO / "tinyreason/benchmarks.py"))


def test_only_config_reads_yaml():
    readers = [p.relative_to(REPO).as_posix() for p in MODULES if "yaml" in imports_of(p)]
    assert readers == ["tinyreason/config.py"]


def test_answer_format_lists_are_defined_once():
    """No module but formats.py spells out the format names as a list or tuple."""
    spelled = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List)):
                values = {n.value for n in node.elts if isinstance(n, ast.Constant)}
                if {"final_answer", "boxed"} <= values:
                    spelled.append(path.relative_to(REPO).as_posix())
    assert spelled == []  # formats.py builds its tuple from the constants
    choices = {f.name: f.metadata.get("choices") for f in config.dataclasses.fields(config.PromptConfig)}
    assert choices["answer_format"] is formats.ANSWER_FORMATS
    assert grading.ANSWER_FORMATS is formats.ANSWER_FORMATS is benchmarks.ANSWER_FORMATS


def test_reward_names_are_defined_once():
    """rewards.REWARDS is the one registry: config validates against it, tracking plots each reward's curve."""
    from tinyreason import tracking

    assert config.REWARDS is rewards.REWARDS
    for name in rewards.REWARDS:
        assert rewards.reward_function(name).__name__ == name
        assert f"train/rewards/{name}/mean" in tracking.PLOTTED_CURVES


def test_recipe_overlays_are_read_through_config(tmp_path):
    overlay = config.load_recipe_overlay("open-rs3")
    assert overlay["params"]["train"]["method"] == "grpo" and "evaluate" in overlay["params"]  # extends merged
    (tmp_path / "broken.yaml").write_text("params: {train: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ is not valid YAML"):
        config.load_recipe_overlay("broken", tmp_path)
    with pytest.raises(ConfigError, match="recipe 'nope': no .* \\(known: broken\\)"):
        config.load_recipe_overlay("nope", tmp_path)


def test_one_leak_check_with_one_scope(tmp_path, smollm_tokenizer):
    """prepare refuses a training question from a vendored benchmark it does not evaluate (the scope GRPO's
    check always had), with the message naming the source, an example and the benchmark."""
    from tinyreason import data

    leaked = benchmarks.load_benchmark("gsm8k")[-1]  # far past the configured limit of 2
    rows = [json.loads(line) for line in (REPO / "data/raw/gsm8k/train.jsonl").read_text().splitlines()[:20]]
    rows.append({"question": "  " + leaked.question.upper(), "answer": "steps\n#### 1"})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.load_config(write_params(tmp_path, {
        "model": SMOLLM_MODEL, "prepare": {"train_path": str(train), "num_samples": 21, "val_fraction": 0.2},
        "evaluate": {"benchmarks": {"math500": {"limit": 2, "prompt": "boxed"}}}}))
    with pytest.raises(DataError) as exc:
        data.build_prepared_splits(cfg, smollm_tokenizer)
    message = str(exc.value)
    assert message.startswith(f"{train}: 1 training question(s) also appear in the test benchmarks")
    assert "(gsm8k)" in message and "\n" not in message
    # GRPO runs the very same function (its own fix names the drop option)
    from tinyreason import grpo

    assert grpo.benchmarks.check_no_test_overlap is benchmarks.check_no_test_overlap
    kept = benchmarks.check_no_test_overlap([{"question": leaked.question}, {"question": "new?"}], "x", drop=True)
    assert kept == [{"question": "new?"}]


def test_answer_vocabulary_is_spelled_only_in_formats():
    tags = (formats.THINK_OPEN, formats.THINK_CLOSE, formats.FINAL_ANSWER_MARKER)
    assert spelled_outside("tinyreason/formats.py", lambda text: any(tag in text for tag in tags)) == []
    assert spelled_outside("tinyreason/formats.py", lambda text: text == formats.FINAL_ANSWER) == []
    assert config.PromptConfig().think_prefix.startswith(formats.THINK_OPEN)
    assert config.PromptConfig().answer_template.startswith(formats.FINAL_ANSWER_MARKER)


def test_pipeline_paths_are_spelled_only_in_paths():
    from tinyreason import paths

    spelled = {str(value) for name, value in vars(paths).items() if name.isupper()} - {"params.yaml"}
    assert {"data/prepared", "models/adapter", "checkpoints", "metrics/train.json"} <= spelled
    folders = {s for s in spelled if "." not in s}

    def names_a_path(text: str) -> bool:
        return text in spelled or any(text.startswith(folder + "/") for folder in folders)

    assert spelled_outside("tinyreason/paths.py", names_a_path) == []


def test_one_jsonl_reader_and_one_hub_loader():
    def calls(path, name: str) -> bool:
        return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                   for node in ast.walk(ast.parse(path.read_text())))

    assert [p.relative_to(REPO).as_posix() for p in CODE if calls(p, "load_dataset")] == ["tinyreason/sources.py"]
    readers = [p.relative_to(REPO).as_posix() for p in CODE if re.search(r"json\.loads\(\s*line", p.read_text())]
    assert readers == ["tinyreason/sources.py"]


def test_run_directory_and_shared_training_pieces_have_one_home():
    """checkpoints.py and training.py serve both methods; grpo.py takes nothing from sft.py."""
    from tinyreason import checkpoints, grpo, sft, training

    assert not any(name.startswith("tinyreason.sft") for name in imports_of(REPO / "tinyreason/grpo.py"))
    assert grpo.TrainResult is sft.TrainResult is training.TrainResult
    assert grpo.last_checkpoint is sft.last_checkpoint is checkpoints.last_checkpoint
    defined = {}
    for path in MODULES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(path.relative_to(REPO).as_posix())
    for name in ("checkpoint_dir_for", "last_checkpoint", "drop_incomplete_checkpoints", "drop_finished_run",
                 "final_step", "step_of", "run_directory"):
        assert defined[name] == ["tinyreason/checkpoints.py"], name
    for name in ("TrainResult", "training_metrics", "precision_flags", "check_device_support",
                 "common_training_arguments"):
        assert defined[name] == ["tinyreason/training.py"], name
    # the metrics both methods report are built in one place
    assert spelled_outside("tinyreason/training.py", lambda text: text == "train_tokens_per_second") == []
    stage = (REPO / "stages/train.py").read_text()
    assert "checkpoints.run_directory(" in stage and "drop_finished_run" not in stage


def test_bench_model_shape_is_defined_once():
    """Qwen2.5-1.5B's dimensions (its vocabulary and MLP width) appear in bench/common.py only."""
    from bench.common import QWEN25_15B

    assert (QWEN25_15B["rope_theta"], QWEN25_15B["max_position_embeddings"]) == (1_000_000.0, 32768)
    dims = (QWEN25_15B["vocab_size"], QWEN25_15B["intermediate_size"])
    files = sorted((REPO / "bench").glob("*.py")) + sorted((REPO / "tests").glob("*.py"))
    spelling = [p.relative_to(REPO).as_posix() for p in files
                if any(isinstance(node, ast.Constant) and node.value in dims
                       for node in ast.walk(ast.parse(p.read_text())))]
    assert spelling == ["bench/common.py"]
