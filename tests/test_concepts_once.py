"""Concepts defined once.

- benchmarks.py owns GSM8K answer parsing, question keys and the one training-vs-test leak check, which
  prepare and GRPO both run with the same scope (every vendored benchmark, plus the run's own test sets);
  benchmarks.py no longer imports data.py (the old import cycle);
- answer formats live in tinyreason/formats.py and reward names in config.GRPO_REWARDS, imported elsewhere;
- recipes/*.yaml are read through config.py (no other module reads YAML).
"""

from __future__ import annotations

import ast
import json

import pytest

from conftest import REPO, SMOLLM_MODEL, write_params
from tinyreason import benchmarks, config, formats, grading, rewards
from tinyreason.errors import ConfigError, DataError

MODULES = sorted((REPO / "tinyreason").rglob("*.py"))


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
