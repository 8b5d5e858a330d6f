"""GSM8K parsing, malformed-row filtering, the seeded split, and the chat rendering of SFT targets."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from tinyreason import benchmarks, data, prompts
from tinyreason.config import PromptConfig
from tinyreason.errors import DataError


def test_split_on_hashes_strips_calculator_annotations_and_commas():
    reasoning, answer = benchmarks.split_gsm8k_answer("She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072")
    assert reasoning == "She sold 48/2 = 24 clips."
    assert answer == "1072"
    assert benchmarks.split_gsm8k_answer("no marker here") is None
    assert benchmarks.split_gsm8k_answer("#### 5") is None  # no reasoning


def test_malformed_rows_are_dropped_and_counted(tmp_path):
    path = tmp_path / "train.jsonl"
    good = {"question": "1+1?", "answer": "one and one\n#### 2"}
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({"question": "q"}),
                               json.dumps({"question": "q", "answer": "no hashes"}), json.dumps(good)]) + "\n")
    examples, dropped = data.load_gsm8k(str(path))
    assert len(examples) == 2 and dropped == 3
    assert examples[0] == data.ReasoningExample("1+1?", "one and one", "2")


def test_all_rows_malformed_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: no usable rows"):
        data.load_gsm8k(str(path))
    with pytest.raises(DataError, match=r"missing.jsonl: data file not found"):
        data.load_gsm8k(str(tmp_path / "missing.jsonl"))


def test_seeded_subsample_and_split_sizes_and_seed_dependence():
    examples, _ = data.load_gsm8k(str(REPO / "data/raw/gsm8k/train.jsonl"))
    train, val = data.subsample_and_split(examples, 2000, 0.1, seed=3407)
    assert (len(train), len(val)) == (1800, 200)
    assert not {e.question for e in train} & {e.question for e in val}
    again, _ = data.subsample_and_split(examples, 2000, 0.1, seed=3407)
    other, _ = data.subsample_and_split(examples, 2000, 0.1, seed=3408)
    assert again == train
    assert other != train


def test_sft_example_renders_think_block_and_final_answer_through_chat_template(smollm_tokenizer):
    cfg = PromptConfig(system="Be brief.")
    row = prompts.render_sft_example(smollm_tokenizer, cfg, "What is 2+3?", "2 + 3 = 5", "5")
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["completion"] == "<think>\n2 + 3 = 5\n</think>\n**Final Answer:** 5<|im_end|>"
    assert row["text"] == row["prompt"] + row["completion"]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in row["prompt"]
    gen = prompts.render_generation_prompt(smollm_tokenizer, cfg, "What is 2+3?")
    assert gen == row["prompt"] + "<think>\n"


def test_training_set_from_the_hub_goes_through_the_one_hub_loader(monkeypatch):
    """A hub id for prepare.train_path is read by sources.load_hub_rows, as benchmarks are; unreachable -> one line."""
    import datasets

    calls = []

    def hub(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        if hub_id == "someone/offline":
            raise ConnectionError("Couldn't reach\n'hf.co'")
        return [{"question": "1+1?", "answer": "one and one\n#### 2"}]

    monkeypatch.setattr(datasets, "load_dataset", hub)
    examples, dropped = data.load_gsm8k("someone/gsm8k-copy", "main", "train")
    assert calls == [("someone/gsm8k-copy", "main", "train")] and dropped == 0
    assert examples == [data.ReasoningExample("1+1?", "one and one", "2")]
    with pytest.raises(DataError) as exc:
        data.load_gsm8k("someone/offline")
    message = str(exc.value)
    assert "\n" not in message and "someone/offline" in message and "ConnectionError" in message
    assert message.endswith(f"(fix: check the id and your connection, or {data.PREPARE_PATH_FIX})")


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_hub_training_data_is_read_at_its_pinned_revision(method, monkeypatch):
    """prepare.hub_revision / train.grpo.hub_revision reach datasets.load_dataset (the hub is offline here:
    the call is recorded, not made)."""
    import datasets

    from tinyreason import data

    calls = []
    row = {"question": "What is 1+1?", "answer": "1+1=2\n#### 2"}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or [row])
    if method == "sft":
        data.load_gsm8k("openai/gsm8k", "main", "train", "abc123")
    else:
        data.read_training_rows("knoveleng/open-rs", None, "train", data.GRPO_PATH_FIX, "abc123")
    assert calls and calls[0][1]["revision"] == "abc123"
