"""train.sft.trl_args / train.grpo.trl_args: any TRL config field the pipeline does not set reaches
TRL's trainer; the pipeline's own fields are refused (the check stage's cases: test_bad_inputs.py)."""

from __future__ import annotations

import dataclasses

import pytest

from test_grpo import one_thread, toy_config, toy_setup  # noqa: F401 - fixtures
from tinyreason import training
from tinyreason.errors import ConfigError


def test_grpo_trl_args_reach_grpo_trainer(toy_setup, one_thread):  # noqa: F811
    from tinyreason.grpo import build_trainer

    root, model_dir, train_path = toy_setup
    cfg = toy_config(model_dir, train_path, 2, trl_args={"num_iterations": 2, "epsilon_high": 0.28})
    trainer = build_trainer(cfg, train_path, root / "ckpt-trl-args", reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    assert (trainer.args.num_iterations, trainer.args.epsilon_high) == (2, 0.28)
    assert (trainer.num_iterations, trainer.epsilon_low, trainer.epsilon_high) == (2, 0.2, 0.28)  # what the loss uses
    assert trainer.args.max_steps == 2 and trainer.args.num_generations == 8  # the params still apply


def test_without_trl_args_trl_defaults_stay(toy_setup):  # noqa: F811
    from tinyreason.grpo import build_grpo_config

    root, model_dir, train_path = toy_setup
    args = build_grpo_config(toy_config(model_dir, train_path, 2), root / "ckpt-defaults")
    assert (args.num_iterations, args.epsilon_high) == (1, None)  # TRL then clips at epsilon both ways


def test_a_value_trl_refuses_is_one_line(toy_setup):  # noqa: F811
    from tinyreason.grpo import build_grpo_config

    root, model_dir, train_path = toy_setup
    cfg = toy_config(model_dir, train_path, 2, trl_args={"generation_batch_size": 7})
    with pytest.raises(ConfigError) as exc:
        build_grpo_config(cfg, root / "ckpt-bad")
    assert "train.grpo.trl_args" in str(exc.value) and "generation_batch_size (7)" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_every_pipeline_set_field_is_owned_or_a_deliberate_default(method, toy_setup, monkeypatch):  # noqa: F811
    """A field the pipeline passes to TRL is either refused in trl_args (TRL_OWNED) or one of the few
    defaults a user may override: a new pipeline setting needs a decision here."""
    from tinyreason import grpo, sft

    root, model_dir, train_path = toy_setup
    seen = {}
    module = grpo if method == "grpo" else sft
    monkeypatch.setattr(module, "build_trl_config", lambda m, arguments, trl_args: seen.update(arguments))
    cfg = toy_config(model_dir, train_path, 2, train={"method": method})
    (grpo.build_grpo_config if method == "grpo" else sft.build_sft_config)(cfg, root / "ckpt")
    overridable = {"logging_first_step", "gradient_checkpointing_kwargs", "dataloader_num_workers", "disable_tqdm",
                   "include_num_input_tokens_seen", "use_liger_kernel"}
    owned = {**training.TRL_OWNED, **(training.GRPO_OWNED if method == "grpo" else training.SFT_OWNED)}
    assert set(seen) - set(owned) <= overridable
    fields = {f.name for f in dataclasses.fields(training.trl_config_class(method))}
    assert set(seen) <= fields


def test_owned_keys_are_trl_fields():
    from trl import GRPOConfig, SFTConfig

    def fields(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert set(training.TRL_OWNED) <= fields(SFTConfig) & fields(GRPOConfig)
    assert set(training.SFT_OWNED) <= fields(SFTConfig) and set(training.GRPO_OWNED) <= fields(GRPOConfig)


def test_a_field_owned_in_one_method_is_free_in_the_other():
    """SFTConfig's own loss_type (nll, dft) is not GRPO's train.grpo.loss_type."""
    training.check_trl_args("sft", {"loss_type": "dft"})
    with pytest.raises(ConfigError, match="set train.grpo.loss_type instead"):
        training.check_trl_args("grpo", {"loss_type": "dapo"})
