"""Proof that training learns: the real train code (TRL SFTTrainer + LoRA via sft.train_sft) teaches
the CPU profile's SmolLM2-135M single-digit arithmetic in the `<think>` / `**Final Answer:**`
format, and the real evaluation code (generation + grading) sees accuracy rise from near zero to
a clear majority on held-out problems. The task and its train/test split are the CPU profile's
(tinyreason/addition.py); tests/test_first_run.py runs the profile itself through the stages."""

from __future__ import annotations

import json

import pytest

from conftest import SMOLLM_MODEL
from tinyreason import addition, evaluation, prompts
from tinyreason.config import config_from_dict


def make_rows(tokenizer, prompt_cfg, pairs):
    rows = []
    for a, b in pairs:
        rows.append(prompts.render_sft_example(tokenizer, prompt_cfg, addition.question(a, b),
                                               f"{a} + {b} = {a + b}", str(a + b)))
    return rows


@pytest.mark.slow
def test_sft_teaches_arithmetic_and_evaluation_sees_it(tmp_path, smollm_tokenizer):
    cfg = config_from_dict({
        "seed": 7,
        "model": SMOLLM_MODEL,
        "prompts": {"final_answer": {"system": "Add the numbers."}},
        "train": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 20,
                  "learning_rate": 2e-3, "warmup_steps": 3, "optim": "adamw_torch", "eval_steps": 10,
                  "save_steps": 10, "max_length": 128, "gradient_checkpointing": False,
                  "logging_steps": 5},
        "evaluate": {"max_new_tokens": 20, "batch_size": 16},
    })
    prompt_cfg = cfg.prompt("final_answer")
    train_file_pairs, test_pairs = addition.split_pairs()
    train_pairs, val_pairs = train_file_pairs[:64], train_file_pairs[64:]
    for name, split in (("train", train_pairs), ("val", val_pairs)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in make_rows(smollm_tokenizer, prompt_cfg, split)))
    test_rows = [{"benchmark": "addition", "id": f"{a}+{b}", "question": addition.question(a, b), "gold": str(a + b),
                  "prompt": prompts.render_generation_prompt(smollm_tokenizer, prompt_cfg, addition.question(a, b)),
                  "answer_format": "final_answer", "numeric_tolerance": None} for a, b in test_pairs]

    from tinyreason import sft

    result = sft.train_sft(cfg, tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "ckpt")
    model = result.trainer.model.eval()
    with model.disable_adapter():
        before = evaluation.summarise(evaluation.predict(model, smollm_tokenizer, cfg, test_rows, "base"), 1)
    after = evaluation.summarise(evaluation.predict(model, smollm_tokenizer, cfg, test_rows, "adapter"), 1)

    print(f"accuracy before {before['accuracy']:.0%}, after {after['accuracy']:.0%} (n={after['n']})")
    assert result.metrics["steps"] == 20
    assert before["accuracy"] <= 0.2, before
    assert after["accuracy"] >= 0.6, after
    assert after["format_rate"] >= 0.9, after
