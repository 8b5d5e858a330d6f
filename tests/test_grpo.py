"""GRPO: params -> GRPOConfig, the test-set leak guard, data loading, and proof that RL learns on CPU.

The learning test builds a tiny random Qwen2 model with a 20-word tokenizer (offline, seconds) and
runs tinyreason.grpo.train_grpo (TRL GRPOTrainer + LoRA, the real path) on a toy task with a
verifiable reward: the share of completion letters that are "a". A random policy scores ~1/20; the
mean reward over the last steps must clearly beat the first steps'.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, shipped_params, shipped_params_path
from tinyreason.config import _deep_merge, config_from_dict
from tinyreason.errors import ConfigError, DataError

WORDS = list("abcdefghijklmnop")
TARGET_LEN = 8


def grpo_cfg(**train):
    raw = _deep_merge(shipped_params(), {"train": _deep_merge({"method": "grpo"}, train)})
    return config_from_dict(raw)


# ---------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_tina_recipe():
    g = grpo_cfg().train.grpo
    assert g.reward_funcs == ["format", "accuracy"] and g.reward_weights == [1.0, 2.0]
    assert (g.beta, g.temperature, g.max_completion_length, g.loss_type) == (0.04, 0.7, 3584, "grpo")


@pytest.mark.parametrize("override, key", [
    ({"grpo": {"reward_funcs": ["format", "bogus"]}}, "train.grpo.reward_funcs[1]"),
    ({"grpo": {"reward_weights": [1.0]}}, "train.grpo.reward_weights"),
    ({"grpo": {"num_generations": 3}}, "train.grpo.num_generations"),
    ({"grpo": {"loss_type": "ppo"}}, "train.grpo.loss_type"),
    ({"grpo": {"scale_rewards": "yes"}}, "train.grpo.scale_rewards"),
    ({"grpo": {"stop_at_step": 9999}}, "train.grpo.stop_at_step"),
    ({"grpo": {"prompt": "nope"}}, "train.grpo.prompt"),
])
def test_bad_grpo_params_fail_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        grpo_cfg(**override)
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_grpo_config_maps_params(tmp_path):
    from tinyreason.grpo import build_grpo_config

    cfg = grpo_cfg(optim="adamw_torch", lr_scheduler_type="cosine_with_min_lr", max_steps=1500,
                   per_device_train_batch_size=6, gradient_accumulation_steps=4,
                   grpo={"loss_type": "dr_grpo", "scale_rewards": "none", "num_generations": 6,
                         "reward_funcs": ["format", "cosine"], "reward_weights": [1.0, 2.0]})
    args = build_grpo_config(cfg, tmp_path)
    assert args.loss_type == "dr_grpo" and args.scale_rewards == "none"
    assert args.beta == 0.04 and args.num_generations == 6 and args.max_completion_length == 3584
    assert args.reward_weights == [1.0, 2.0] and args.temperature == 0.7
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.generation_batch_size == 24 and args.eval_strategy == "no"


@pytest.mark.parametrize("grpo, expected", [
    ({"rollout": "vllm"}, {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}),
    ({"rollout": "vllm", "vllm_gpu_memory_utilization": 0.55}, {"use_vllm": True, "vllm_gpu_memory_utilization": 0.55}),
    # server mode: the memory share is the server's own flag; TRL's default stays
    ({"rollout": "vllm", "vllm_mode": "server", "vllm_gpu_memory_utilization": 0.55},
     {"use_vllm": True, "vllm_mode": "server", "vllm_gpu_memory_utilization": 0.3}),
    ({"rollout": "trl", "vllm_mode": "server"}, {"use_vllm": False}),
    ({"rollout": "engine"}, {"use_vllm": False}),
])
def test_vllm_rollout_maps_to_trls_vllm_arguments(tmp_path, grpo, expected):
    """rollout: vllm is TRL's own vLLM integration (not exercised here: no vLLM wheel); built without training."""
    from tinyreason.grpo import build_grpo_config

    args = build_grpo_config(grpo_cfg(optim="adamw_torch", grpo=grpo), tmp_path)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("override, key", [
    ({"grpo": {"rollout": "vlm"}}, "train.grpo.rollout"),
    ({"grpo": {"vllm_mode": "remote"}}, "train.grpo.vllm_mode"),
    ({"grpo": {"vllm_gpu_memory_utilization": 1.5}}, "train.grpo.vllm_gpu_memory_utilization"),
])
def test_bad_vllm_params_fail_in_one_line(override, key):
    with pytest.raises(ConfigError) as exc:
        grpo_cfg(**override)
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_every_registered_reward_is_accepted_and_others_refused():
    from tinyreason import rewards

    names = list(rewards.REWARDS)
    assert grpo_cfg(grpo={"reward_funcs": names, "reward_weights": [1.0] * len(names)}).train.grpo.reward_funcs == names
    with pytest.raises(ConfigError) as exc:
        grpo_cfg(grpo={"reward_funcs": ["format", "brevity"], "reward_weights": [1.0, 1.0]})
    assert "unknown reward 'brevity'" in str(exc.value) and f"known: {', '.join(names)}" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# Data and the leak guard


def test_math_style_and_gsm8k_rows_load(tmp_path):
    from tinyreason.grpo import load_problems

    rows = [{"problem": "What is 1+1?", "solution": "So \\boxed{2}.", "answer": "2"},
            {"problem": "What is 2+3?", "solution": "It is \\boxed{5}."},          # answer from the box
            {"question": "Tom has 3 apples and eats one. How many?", "answer": "3 - 1 = 2\n#### 2"},
            {"problem": "no answer here"}, "not a dict"]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_problems(grpo_cfg(grpo={"train_path": str(path)}), tmp_path / "unused.jsonl")
    assert [(r["question"][:11], r["answer"]) for r in got] == [
        ("What is 1+1", "2"), ("What is 2+3", "5"), ("Tom has 3 a", "2")]


def test_training_on_a_test_benchmark_problem_fails_loudly(tmp_path):
    from tinyreason import benchmarks
    from tinyreason.grpo import load_problems

    leaked = benchmarks.load_benchmark("math500", limit=1)[0]
    rows = [{"problem": "What is 1+1?", "answer": "2"},
            {"problem": "  " + leaked.question.upper() + " ", "answer": leaked.gold}]  # case/space changes
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as exc:
        load_problems(grpo_cfg(grpo={"train_path": str(path)}), tmp_path / "unused.jsonl")
    message = str(exc.value)
    assert "1 training question(s) also appear in the test benchmarks" in message and "(math500)" in message
    assert "drop_test_overlap=true" in message
    assert "\n" not in message
    kept = load_problems(grpo_cfg(grpo={"train_path": str(path), "drop_test_overlap": True}), tmp_path / "x")
    assert [r["answer"] for r in kept] == ["2"]


def test_prepared_split_is_guarded_too(tmp_path):
    from tinyreason import benchmarks
    from tinyreason.grpo import load_problems

    test_q = benchmarks.load_benchmark("gsm8k", limit=1)[0]
    prepared = tmp_path / "train.jsonl"
    prepared.write_text(json.dumps({"question": test_q.question, "answer": test_q.gold, "prompt": "p",
                                    "completion": "c"}) + "\n")
    with pytest.raises(DataError, match="gsm8k"):
        load_problems(grpo_cfg(), prepared)


def test_missing_local_file_is_one_line(tmp_path):
    from tinyreason.grpo import load_problems

    with pytest.raises(DataError, match="train.grpo.train_path"):
        load_problems(grpo_cfg(grpo={"train_path": str(tmp_path / "nope.jsonl")}), tmp_path / "x")


# ---------------------------------------------------------------------------------------------
# Proof that RL learns (CPU)


def build_toy_model(directory: Path) -> Path:
    """A 2-layer random Qwen2 and a letter tokenizer with a minimal chat template, saved offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.2, eos_token_id=vocab["<|im_end|>"],
                         pad_token_id=vocab["<|endoftext|>"], bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def share_of_a(completions, **kwargs) -> list[float]:
    return [c.count("a") / TARGET_LEN for c in completions]


def toy_config(model_dir: Path, train_path: Path, steps: int, train: dict | None = None, **grpo):
    return config_from_dict(_deep_merge(shipped_params(), _toy_overrides(model_dir, train_path, steps, train, **grpo)))


def _toy_overrides(model_dir: Path, train_path: Path, steps: int, train: dict | None = None, **grpo) -> dict:
    overrides = {
        "model": {"name_or_path": str(model_dir), "gguf_file": None, "load_in_4bit": False,
                  "dtype": "float32", "attn_implementation": "sdpa"},
        "prompts": {"toy": {"system": None, "user_template": "{question}", "think_prefix": "",
                            "answer_template": "{answer}", "answer_format": "final_answer"}},
        "train": {"method": "grpo", "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1,
                  "max_steps": steps, "learning_rate": 1.0e-2, "lr_scheduler_type": "constant",
                  "warmup_steps": 0, "optim": "adamw_torch", "weight_decay": 0.0, "eval_steps": 1000,
                  "save_steps": 1000, "logging_steps": 1, "gradient_checkpointing": False,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                  "grpo": _deep_merge({"train_path": str(train_path), "prompt": "toy", "num_generations": 8,
                                       "max_completion_length": TARGET_LEN, "temperature": 1.0,
                                       "beta": 0.0, "rollout": "trl", "max_prompt_length": 64,
                                       "held_out": 0}, grpo)},
    }
    overrides["train"].update(train or {})
    return overrides


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-grpo")
    model_dir = build_toy_model(root / "model")
    train_path = root / "train.jsonl"
    prompts = ["b c d", "e f", "g h i j", "k l", "m n o", "p b"]
    train_path.write_text("".join(json.dumps({"problem": p, "answer": "a"}) + "\n" for p in prompts))
    return root, model_dir, train_path


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread avoids OpenMP spin contention (~50x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_grpo_learns_a_toy_task_on_cpu(toy_setup, one_thread):
    from tinyreason.grpo import train_grpo

    root, model_dir, train_path = toy_setup
    steps = 30
    cfg = toy_config(model_dir, train_path, steps)
    result = train_grpo(cfg, train_path, root / "ckpt", reward_funcs=[share_of_a])
    rewards = [e["reward"] for e in result.trainer.state.log_history if "reward" in e]
    assert len(rewards) == steps and result.metrics["steps"] == steps
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print("toy GRPO reward curve:", [round(r, 3) for r in rewards])
    assert last > first + 0.4 and last > 0.8, f"reward did not rise: first {first:.3f} -> last {last:.3f}"
    assert "rewards/share_of_a/mean" in result.trainer.state.log_history[-2]
    assert result.metrics["final_reward"] is not None and result.metrics["rollout"] == "trl"


def test_engine_rollouts_learn_too(toy_setup, one_thread):
    """The fast path: rollouts from tinyreason.generation's engine (eager on CPU) via TRL's rollout_func."""
    from tinyreason.grpo import train_grpo

    root, model_dir, train_path = toy_setup
    steps = 16
    from dvclive import Live

    cfg = toy_config(model_dir, train_path, steps, rollout="engine", beta=0.04)
    live = Live(str(root / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None)
    result = train_grpo(cfg, train_path, root / "ckpt-engine", live=live, reward_funcs=[share_of_a])
    rewards = [e["reward"] for e in result.trainer.state.log_history if "reward" in e]
    print("toy GRPO (engine rollouts) reward curve:", [round(r, 3) for r in rewards])
    assert result.metrics["rollout"] == "engine" and len(rewards) == steps
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.3
    # DVCLive: every GRPO plot file that dvc.yaml names (reward, length, clipped share, KL, lr) is written
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    files = [f for p in plots for title, spec in p.items()  # held-out curves: tests/test_monitoring.py
             if title.startswith("grpo") and "held-out" not in title for f in spec["y"]]
    files.append("dvclive/train/plots/metrics/train/learning_rate.tsv")
    for f in files:
        if "/rewards/" in f:  # per-function curves: the toy run's function is share_of_a
            f = f.split("/rewards/")[0] + "/rewards/share_of_a/mean.tsv"
        path = root / f.replace("dvclive/train/", "dvclive/", 1)
        assert path.is_file() and len(path.read_text().splitlines()) == steps + 1, f


def test_stop_at_step_keeps_the_longer_schedule(toy_setup, one_thread):
    """The half-cosine trick: the schedule is built for max_steps, training stops at stop_at_step."""
    from tinyreason.grpo import train_grpo

    root, model_dir, train_path = toy_setup
    cfg = toy_config(model_dir, train_path, 8, train={"lr_scheduler_type": "cosine_with_min_lr"}, stop_at_step=4)
    result = train_grpo(cfg, train_path, root / "ckpt-stop", reward_funcs=[share_of_a])
    assert result.metrics["steps"] == 4 and result.trainer.state.max_steps == 8
    lrs = [e["learning_rate"] for e in result.trainer.state.log_history if "learning_rate" in e]
    # cosine from 1e-2 to the 10% floor over 8 steps (min_lr_rate); step 4 ran at the lr of schedule
    # step 3, far above the floor: the run ends with the lr cut about halfway, as in Tina
    assert lrs[-1] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 8))), rel=0.02)
    assert (root / "ckpt-stop" / "checkpoint-4").is_dir()  # the stop step is saved


# ---------------------------------------------------------------------------------------------
# Recipe presets (recipes/*.yaml) and `tinyreason recipe NAME --dry-run`

EXPECTED_PRESETS = {  # name: (dataset, max_steps, stop, per-device batch, generations, lr, rank, rewards)
    "open-rs1": ("knoveleng/open-s1", 5000, 2400, 4, 4, 1e-6, 32, ["format", "accuracy"]),
    "open-rs2": ("knoveleng/open-rs", 1500, 850, 6, 6, 1e-6, 32, ["format", "accuracy"]),
    "open-rs3": ("knoveleng/open-rs", 1500, 850, 6, 6, 1e-6, 32, ["format", "cosine"]),
    "still-3": ("RUC-AIBOX/STILL-3-Preview-RL-Data", 7500, 3750, 4, 4, 1e-6, 32, ["length", "accuracy"]),
    "deepscaler": ("agentica-org/DeepScaleR-Preview-Dataset", 11000, 5500, 4, 4, 1e-6, 32, ["format", "accuracy"]),
    "limr": ("GAIR/LIMR", 360, 180, 4, 4, 1e-6, 32, ["format", "accuracy"]),
    "limr-lr-large": ("GAIR/LIMR", 360, 180, 4, 4, 5e-6, 32, ["format", "accuracy"]),
    "limr-lr-small": ("GAIR/LIMR", 360, 180, 4, 4, 5e-7, 32, ["format", "accuracy"]),
    "limr-rank-tiny": ("GAIR/LIMR", 360, 180, 4, 4, 1e-6, 4, ["format", "accuracy"]),
    "limr-rank-small": ("GAIR/LIMR", 360, 180, 4, 4, 1e-6, 8, ["format", "accuracy"]),
    "limr-rank-medium": ("GAIR/LIMR", 360, 180, 4, 4, 1e-6, 16, ["format", "accuracy"]),
    "limr-rank-large": ("GAIR/LIMR", 360, 180, 4, 4, 1e-6, 128, ["format", "accuracy"]),
    "dr-grpo": ("knoveleng/open-rs", 1500, 850, 6, 6, 1e-6, 32, ["format", "cosine"]),
}


def test_every_tina_preset_exists_and_validates():
    from tinyreason import recipes

    assert sorted(recipes.recipe_names()) == sorted(EXPECTED_PRESETS)
    for name, (ds, steps, stop, bs, gens, lr, rank, funcs) in EXPECTED_PRESETS.items():
        params = recipes.load_recipe(name)["params"]
        cfg = config_from_dict(_deep_merge(shipped_params(), params), source=f"recipes/{name}.yaml")
        t, g = cfg.train, cfg.train.grpo
        assert (g.train_path, t.max_steps, g.stop_at_step) == (ds, steps, stop), name
        assert stop / steps == pytest.approx(0.5, abs=0.08), name  # the half-cosine trick
        assert (t.per_device_train_batch_size, g.num_generations, t.learning_rate, t.lora.r) == (bs, gens, lr, rank)
        assert t.lora.alpha == 4 * rank and t.lora.dropout == 0.05 and len(t.lora.target_modules) == 7
        assert t.gradient_accumulation_steps == 8  # Tina: 4 x 2 GPUs
        assert t.lr_scheduler_type == "cosine_with_min_lr" and g.min_lr_rate == 0.1
        assert t.warmup_steps == math.ceil(0.1 * steps)  # warmup_ratio 0.1
        assert (g.beta, g.temperature, g.max_completion_length, g.max_prompt_length) == (0.04, 0.7, 3584, 512)
        assert g.reward_funcs == funcs and g.reward_weights == [1.0, 2.0]
        assert cfg.model.name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and cfg.seed == 42
        assert g.prompt == ("tina_open_rs" if ds == "knoveleng/open-rs" else "tina_open_r1")
        expected_loss = ("bnpo", "none") if name == "dr-grpo" else ("grpo", "group")
        assert (g.loss_type, g.scale_rewards) == expected_loss, name
        if "cosine" in funcs:
            assert g.cosine_max_len == 3584


def test_recipe_dry_run_prints_the_dvc_command(capsys):
    from tinyreason.cli import main

    assert main(["recipe", "open-rs3", "--dry-run", "--params", str(shipped_params_path())]) == 0
    line = capsys.readouterr().out.strip()
    assert re.match(r"dvc exp run -n tina-open-rs3-\d{8}-\d{6}-[0-9a-f]{4} ", line), line
    for flag in ["-S train.method=grpo", "-S train.max_steps=1500", "-S train.grpo.stop_at_step=850",
                 "-S train.warmup_steps=150", "-S train.learning_rate=1e-06",
                 "-S train.lr_scheduler_type=cosine_with_min_lr", "-S train.grpo.min_lr_rate=0.1",
                 "-S 'train.grpo.reward_funcs=[format,cosine]'", "-S 'train.grpo.reward_weights=[1.0,2.0]'",
                 "-S train.grpo.cosine_max_len=3584", "-S train.grpo.train_path=knoveleng/open-rs",
                 "-S train.lora.r=32", "-S train.lora.alpha=128", "-S train.grpo.num_generations=6",
                 "-S train.per_device_train_batch_size=6", "-S train.gradient_accumulation_steps=8"]:
        assert flag in line, flag
    assert main(["recipe", "dr-grpo", "--dry-run", "--params", str(shipped_params_path())]) == 0
    line = capsys.readouterr().out
    assert "-S train.grpo.loss_type=bnpo" in line and "-S train.grpo.scale_rewards=none" in line


def test_recipe_flags_applied_by_dvc_give_the_preset_config(tmp_path):
    """The -S flags, applied by DVC's own override code to a copy of params.yaml, load to the same config."""
    import shutil

    from dvc.utils.hydra import apply_overrides

    from tinyreason import recipes
    from tinyreason.config import load_config

    for name in ("open-rs3", "still-3", "limr-rank-large"):
        params = tmp_path / f"{name}.yaml"
        shutil.copy(shipped_params_path(), params)
        cmd = recipes.recipe_command(name, shipped_params_path())
        apply_overrides(params, [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"])
        direct = config_from_dict(_deep_merge(shipped_params(), recipes.load_recipe(name)["params"]))
        assert load_config(params) == direct, name


def test_unknown_recipe_is_one_line(capsys):
    from tinyreason.cli import main

    assert main(["recipe", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "recipe 'nope'" in err and "open-rs3" in err and err.count("\n") == 1


def test_train_stage_runs_grpo_and_reports_cost(toy_setup, tmp_path):
    """stages/train.py dispatches on train.method: adapter, metrics (with cost) and GRPO curves."""
    import os
    import shutil
    import subprocess
    import sys

    root, model_dir, train_path = toy_setup
    work = tmp_path / "work"
    shutil.copytree(REPO / "stages", work / "stages")
    (work / "data" / "prepared").mkdir(parents=True)
    row = json.dumps({"prompt": "b c", "completion": "a", "question": "b c", "answer": "a"})
    for split in ("train", "val"):
        (work / "data" / "prepared" / f"{split}.jsonl").write_text(row + "\n")
    raw = _deep_merge(shipped_params(), {"train": {"max_length": 64}})
    cfg_raw = _deep_merge(raw, {k: v for k, v in _toy_overrides(model_dir, train_path, 3).items()})
    cfg_raw["train"]["grpo"]["reward_funcs"] = ["format"]  # a real reward through the stage
    cfg_raw["train"]["grpo"]["reward_weights"] = [1.0]
    cfg_raw["train"]["grpo"]["held_out"] = 2  # monitoring through the stage: its files land in dvclive/train
    cfg_raw["train"]["eval_steps"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(cfg_raw, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "stages/train.py"], cwd=work, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((work / "metrics" / "train.json").read_text())
    assert metrics["method"] == "grpo" and metrics["steps"] == 3
    assert set(metrics["cost"]) >= {"gpu_seconds", "usd", "wall_seconds"} and "format" in metrics["final_rewards"]
    assert (work / "models" / "adapter" / "adapter_config.json").is_file()
    assert (work / "dvclive" / "train" / "plots" / "metrics" / "train" / "rewards" / "format" / "mean.tsv").is_file()
    assert (work / "dvclive" / "train" / "plots" / "metrics" / "eval" / "heldout" / "accuracy.tsv").is_file()
    assert (work / "dvclive" / "train" / "completions.jsonl").read_text().count("\n") == 3 * 4  # 3 logging steps x 4
    assert set(metrics["final_heldout"]) >= {"accuracy", "format_rate", "mean_length"}


def test_merged_shadow_generates_like_the_unmerged_lora_model(toy_setup, one_thread):
    """Rollouts on merged weights = rollouts on the PEFT model; a changed adapter is seen after refresh."""
    import torch
    from peft import get_peft_model

    from tinyreason import modeling
    from tinyreason.generation import GenerationEngine
    from tinyreason.rollout import MergedShadow

    root, model_dir, _ = toy_setup
    cfg = toy_config(model_dir, root / "train.jsonl", 2)
    model = get_peft_model(modeling.load_base_model(cfg.model), modeling.lora_config(cfg.train.lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking adapter (B starts at zero)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]

    def greedy(m):
        return GenerationEngine(m, max_num_seqs=3, max_model_len=64).generate(prompts, 12, temperature=0.0)

    shadow = MergedShadow(model)
    assert greedy(shadow.model) == greedy(model)
    # one engine across the refresh, as EngineRollout keeps it: q/k/v and gate/up run as single GEMMs
    # over views of the shadow's buffers, so the refreshed weights are what it reads
    engine = GenerationEngine(shadow.model, max_num_seqs=3, max_model_len=64)
    assert engine.runner.fused is not None
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.mul_(-1.0)
    before = engine.generate(prompts, 12, temperature=0.0)
    shadow.refresh()
    after = engine.generate(prompts, 12, temperature=0.0)
    assert after == greedy(model) and after != before
    base_q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert shadow.model.model.embed_tokens.weight.data_ptr() == model.get_base_model().model.embed_tokens.weight.data_ptr()
    assert shadow.model.model.layers[0].self_attn.q_proj.weight.data_ptr() != base_q.data_ptr()


def test_cpu_profile_with_grpo_validates():
    cfg = config_from_dict(_deep_merge(shipped_params(), {"profile": "cpu", "train": {"method": "grpo"}}))
    assert cfg.train.grpo.num_generations == 2 and cfg.train.grpo.max_completion_length == 48


# ---------------------------------------------------------------------------------------------
# Kill and resume (as tests/test_reliability.py does for SFT): the train stage SIGKILLed after a
# checkpoint, then rerun, ends bit-identical to an uninterrupted run. Rollouts must sample the same
# completions after the resume: HF generate draws from torch's RNG (restored from the checkpoint's
# rng_state.pth), the engine seeds each rollout from the global step (rollout.EngineRollout).

TIMINGS = ("runtime", "per_second", "step_time")  # wall-clock, not training
RESUME_STEPS, KILL_AFTER_STEP = 10, 2  # steps of ~0.05 s: 8 left to kill it in


def _stage_workdir(work: Path, model_dir: Path, train_path: Path, rollout: str) -> Path:
    import shutil

    shutil.copytree(REPO / "stages", work / "stages")
    (work / "data" / "prepared").mkdir(parents=True)
    row = json.dumps({"prompt": "b c", "completion": "a", "question": "b c", "answer": "a"})
    for split in ("train", "val"):
        (work / "data" / "prepared" / f"{split}.jsonl").write_text(row + "\n")
    raw = _deep_merge(shipped_params(), _toy_overrides(model_dir, train_path, RESUME_STEPS,
                                                      {"save_steps": KILL_AFTER_STEP, "eval_steps": KILL_AFTER_STEP,
                                                       "max_length": 64},
                                                      rollout=rollout, beta=0.04))
    # the length reward varies with each completion's length: non-zero advantages, so the adapter moves
    raw["train"]["grpo"].update(reward_funcs=["length"], reward_weights=[1.0])
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return work


def _train_stage(work: Path, kill_after: int | None = None):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "stages/train.py"], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if kill_after is not None:
        deadline = time.monotonic() + 300
        while not list(work.glob(f"checkpoints/*/checkpoint-{kill_after}/trainer_state.json")):
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == (-signal.SIGKILL if kill_after is not None else 0), out[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("rollout", ["trl", "engine"])
def test_killed_grpo_run_resumes_bit_identical(toy_setup, tmp_path, rollout):
    import torch
    from safetensors.torch import load_file

    _, model_dir, train_path = toy_setup
    ref = _stage_workdir(tmp_path / "ref", model_dir, train_path, rollout)
    killed = _stage_workdir(tmp_path / "killed", model_dir, train_path, rollout)
    _train_stage(ref)
    _train_stage(killed, kill_after=KILL_AFTER_STEP)
    assert not (killed / "models" / "adapter").exists()
    assert "resuming from" in _train_stage(killed)
    assert json.loads((killed / "metrics" / "train.json").read_text())["resumed_from_step"] == KILL_AFTER_STEP

    a, b = (load_file(w / "models" / "adapter" / "adapter_model.safetensors") for w in (ref, killed))
    assert a.keys() == b.keys() and a and all(a[k].equal(b[k]) for k in a)
    assert any(k for k in a if "lora_B" in k and a[k].abs().sum() > 0), "the adapter never moved"

    def last_checkpoint(work):
        (ckpt,) = work.glob(f"checkpoints/*/checkpoint-{RESUME_STEPS}")
        return ckpt

    opt_a, opt_b = (torch.load(last_checkpoint(w) / "optimizer.pt", weights_only=True)["state"] for w in (ref, killed))
    assert opt_a.keys() == opt_b.keys() and opt_a
    assert all(opt_a[i][k].equal(opt_b[i][k]) for i in opt_a for k in opt_a[i])

    def history(work):  # every logged loss, reward, completion length, KL, grad norm: the same floats
        entries = json.loads((last_checkpoint(work) / "trainer_state.json").read_text())["log_history"]
        return [{k: v for k, v in e.items() if not k.endswith(TIMINGS)} for e in entries]

    assert history(killed) == history(ref)
    assert len([e for e in history(ref) if "loss" in e]) == RESUME_STEPS
    curves = sorted(p.relative_to(ref) for p in (ref / "dvclive" / "train").rglob("*.tsv")
                    if not p.stem.endswith(TIMINGS))
    assert len(curves) > 5 and any(p.name == "reward.tsv" for p in curves)
    for name in curves:
        assert (killed / name).read_text() == (ref / name).read_text(), name


# ---------------------------------------------------------------------------------------------
# The loss stays TRL's: tinyreason swaps the rollouts only. Our trainer (built from params) and a
# GRPOTrainer configured by hand with the same values give the same loss and gradient on one batch.


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo"])
def test_grpo_loss_and_gradient_are_trls(toy_setup, one_thread, tmp_path, loss_type):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from tinyreason.grpo import build_trainer

    root, model_dir, train_path = toy_setup
    # non-default clip, KL weight and length, so a value our GRPOConfig mapping dropped would show
    settings = dict(loss_type=loss_type, beta=0.3, epsilon=0.1, num_generations=4, max_completion_length=6)
    cfg = toy_config(model_dir, train_path, 1, train={"per_device_train_batch_size": 8}, **settings)
    ours = build_trainer(cfg, train_path, tmp_path / "ours", reward_funcs=[share_of_a])
    for method in ("compute_loss", "_compute_loss", "_get_per_token_logps_and_entropies"):
        assert getattr(type(ours), method) is getattr(GRPOTrainer, method), f"{method} is not TRL's"

    reference = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), reward_funcs=[share_of_a],
        train_dataset=ours.train_dataset, processing_class=ours.processing_class,
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                               target_modules=list(cfg.train.lora.target_modules)),
        # the loss settings as written above; float32 on CPU as ours (TRL's default bf16=True autocasts)
        args=GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                        per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=4,
                        max_completion_length=6, beta=0.3, epsilon=0.1, loss_type=loss_type, report_to="none"))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (B starts at zero), the same in both
        for name, param in ours.model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    assert not reference.model.load_state_dict(ours.model.state_dict(), strict=False).unexpected_keys

    g = torch.Generator().manual_seed(1)
    completion_mask = torch.ones(8, 6, dtype=torch.long)
    completion_mask[::3, 4:] = 0  # some completions ended early
    batch = {"prompt_ids": torch.randint(4, 20, (8, 3), generator=g), "prompt_mask": torch.ones(8, 3, dtype=torch.long),
             "completion_ids": torch.randint(4, 20, (8, 6), generator=g), "completion_mask": completion_mask,
             "advantages": torch.randn(8, generator=g), "old_per_token_logps": -3 + 0.1 * torch.randn(8, 6, generator=g),
             "ref_per_token_logps": -3 + 0.1 * torch.randn(8, 6, generator=g),
             "num_items_in_batch": completion_mask.sum()}

    def loss_and_grads(trainer):
        trainer.model.train()
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1  # Trainer sets it per step
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    loss, grads = loss_and_grads(ours)
    ref_loss, ref_grads = loss_and_grads(reference)
    assert grads.keys() == ref_grads.keys() and grads
    assert loss.item() != 0 and torch.equal(loss, ref_loss)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in grads.values()]))
    ref_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in ref_grads.values()]))
    assert norm > 0 and torch.equal(norm, ref_norm)
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)
