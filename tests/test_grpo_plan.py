"""GRPO's memory plan (tinyreason/grpo_plan.py): the rollout batch is cut into micro-batches from free
GPU memory, without gradient checkpointing when it fits, and only where the loss allows it."""

import pytest

from conftest import shipped_params
from tinyreason.config import _deep_merge, config_from_dict
from tinyreason.grpo_plan import plan_grpo
from tinyreason.training import GIB

# Qwen2.5-1.5B / DeepSeek-R1-Distill-Qwen-1.5B shapes (tied embeddings)


@pytest.fixture(scope="module")
def shape(qwen25_15b_dims) -> dict:
    """Qwen2.5-1.5B / DeepSeek-R1-Distill-Qwen-1.5B: the model shape and its K/V layout."""
    assert (qwen25_15b_dims.kv_heads, qwen25_15b_dims.head_dim) == (2, 128)
    return dict(dims=qwen25_15b_dims)


def open_rs2(**train):
    """The Tina open-rs2 preset's batch: 6 x 8 completions of up to 512 + 3584 tokens."""
    loss_type = train.pop("loss_type", "grpo")
    over = {"train": {"method": "grpo", "per_device_train_batch_size": 6, "gradient_accumulation_steps": 8,
                      "gradient_checkpointing": True, "optim": "adamw_torch", **train,
                      "grpo": {"num_generations": 6, "max_prompt_length": 512, "max_completion_length": 3584,
                               "loss_type": loss_type}}}
    return config_from_dict(_deep_merge(shipped_params(), over))


def test_80gb_card_drops_checkpointing_with_smaller_micro_batches(shape):
    plan = plan_grpo(open_rs2(), cuda=True, free_bytes=79 * GIB, **shape)
    assert not plan.gradient_checkpointing
    assert plan.micro_batch * plan.accumulation == 48 and plan.micro_batch < 6
    assert plan.estimated_peak_gib <= 0.85 * 79


def test_more_memory_means_larger_micro_batches_and_the_rollout_batch_never_changes(shape):
    plans = [plan_grpo(open_rs2(), cuda=True, free_bytes=gib * GIB, **shape) for gib in (24, 48, 80, 140, 400)]
    assert all(p.micro_batch * p.accumulation == 48 for p in plans)
    sizes = [(not p.gradient_checkpointing, p.micro_batch) for p in plans]
    assert sizes == sorted(sizes) and sizes[0] != sizes[-1]
    assert plans[-1].micro_batch >= 24 and not plans[-1].gradient_checkpointing


def test_too_little_memory_falls_back_to_one_sequence_with_checkpointing(shape):
    plan = plan_grpo(open_rs2(), cuda=True, free_bytes=8 * GIB, **shape)
    assert (plan.micro_batch, plan.accumulation, plan.gradient_checkpointing) == (1, 48, True)


@pytest.mark.parametrize("why,cfg,cuda", [
    ("faithful", open_rs2(speed="faithful"), True),
    ("bnpo", open_rs2(loss_type="bnpo"), True),
    ("cpu", open_rs2(), False),
])
def test_params_kept_where_the_cut_would_change_the_run(why, cfg, cuda, shape):
    plan = plan_grpo(cfg, cuda=cuda, free_bytes=79 * GIB, **shape)
    assert (plan.micro_batch, plan.accumulation, plan.gradient_checkpointing) == (6, 8, True), why
    assert plan.reason


def test_grpo_config_takes_the_plan(tmp_path):
    from tinyreason.grpo import build_grpo_config
    from tinyreason.grpo_plan import GrpoPlan

    args = build_grpo_config(open_rs2(), tmp_path, GrpoPlan(3, 16, False))
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 16)
    assert not args.gradient_checkpointing and args.steps_per_generation == 16
    assert args.per_device_train_batch_size * args.steps_per_generation == 48  # one rollout per optimizer step
