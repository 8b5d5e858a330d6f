"""Data-parallel training: train.num_gpus relaunches the train stage through `accelerate
launch` with the recipe's global batch split over the processes; only rank 0 writes outputs.

The slow test runs the real train stage as 2 CPU processes (torch.distributed gloo, started by the
same `accelerate launch` command the stage builds for GPUs) and as 1 process with the whole batch,
and compares the logged training losses step by step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_workdir, run_stage, shipped_params, shipped_params_path, tiny_run_overrides, write_params
from tinyreason import distributed
from tinyreason.config import config_from_dict, load_config
from tinyreason.errors import ConfigError, TinyReasonError

LAUNCHER_VARS = ("LOCAL_RANK", "WORLD_SIZE", "RANK", distributed.LAUNCHED_ENV, distributed.CONFIG_ENV)


def cfg_with(**train):
    raw = shipped_params()
    raw["train"].update(train)
    return config_from_dict(raw)


@pytest.fixture
def single_process(monkeypatch):
    """No launcher variables: this process is a plain `python stages/train.py`."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------
# Config and batch split


def test_num_gpus_default_and_validation():
    assert load_config(shipped_params_path()).train.num_gpus == 1
    assert cfg_with(num_gpus=0).train.num_gpus == 0
    with pytest.raises(ConfigError, match=r"params.yaml: train.num_gpus: -1 is out of range"):
        cfg_with(num_gpus=-1)
    with pytest.raises(ConfigError, match=r"train.num_gpus: expected an integer"):
        cfg_with(num_gpus="auto")


@pytest.mark.parametrize("per_device, accumulation, processes, expected", [
    (2, 4, 1, (2, 4)),   # one GPU: the recipe as written
    (2, 4, 2, (2, 2)),   # accumulation divided first
    (2, 4, 4, (2, 1)),
    (2, 4, 8, (1, 1)),   # then the micro-batch
    (4, 8, 2, (4, 4)),   # Tina: 4 x 8 on one GPU = 4 x 4 on each of 2 GPUs
    (6, 1, 2, (3, 1)),
    (6, 1, 3, (2, 1)),
    (4, 3, 2, (3, 2)),   # 6 per GPU: the largest micro-batch <= 4 that divides it
])
def test_split_batch_keeps_the_global_batch(per_device, accumulation, processes, expected):
    micro, acc = distributed.split_batch(per_device, accumulation, processes)
    assert (micro, acc) == expected
    assert micro * acc * processes == per_device * accumulation
    assert micro <= per_device


def test_uneven_split_is_one_line_naming_keys_and_fix():
    with pytest.raises(TinyReasonError) as err:
        distributed.split_batch(2, 3, 4)
    message = str(err.value)
    assert "\n" not in message
    assert "train.per_device_train_batch_size x train.gradient_accumulation_steps = 2 x 3 = 6" in message
    assert "4 GPUs" in message and "fix:" in message and "train.num_gpus" in message


def test_per_rank_config_records_the_process_count():
    cfg = distributed.per_rank_config(cfg_with(num_gpus=0), 2)
    t = cfg.train
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.num_gpus) == (2, 2, 2)


def test_gpus_to_use():
    assert distributed.gpus_to_use(0, 4) == 4    # auto: every visible GPU
    assert distributed.gpus_to_use(0, 0) == 1    # auto on CPU: one process
    assert distributed.gpus_to_use(1, 8) == 1
    assert distributed.gpus_to_use(2, 8) == 2
    with pytest.raises(TinyReasonError, match=r"train.num_gpus: 4 but 2 CUDA GPU\(s\) are visible \(fix:"):
        distributed.gpus_to_use(4, 2)


# ---------------------------------------------------------------------------------------------
# Relaunch decision


class Exec:
    """Stands in for os.execvpe: records the command instead of replacing the process."""

    def __init__(self):
        self.calls = []

    def __call__(self, file, argv, env):
        self.calls.append((file, argv, env))
        raise SystemExit(0)


def test_relaunches_through_accelerate_with_a_loop_guard(single_process):
    fake = Exec()
    with pytest.raises(SystemExit):
        distributed.maybe_relaunch(cfg_with(num_gpus=0), "stages/train.py", ["--x"], visible=2, execvpe=fake)
    ((file, argv, env),) = fake.calls
    assert file == sys.executable
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert argv[argv.index("--config_file") + 1] == str(distributed.DEFAULT_CONFIG)
    assert argv[-2:] == ["stages/train.py", "--x"]
    assert env[distributed.LAUNCHED_ENV] == "1"


def test_no_relaunch_for_one_gpu_or_cpu(single_process):
    fake = Exec()
    assert distributed.maybe_relaunch(cfg_with(num_gpus=1), "s.py", visible=8, execvpe=fake) == 1
    assert distributed.maybe_relaunch(cfg_with(num_gpus=0), "s.py", visible=1, execvpe=fake) == 1
    assert distributed.maybe_relaunch(cfg_with(num_gpus=0), "s.py", visible=0, execvpe=fake) == 1
    assert not fake.calls


def test_launched_process_never_relaunches(single_process, monkeypatch):
    fake = Exec()
    monkeypatch.setenv(distributed.LAUNCHED_ENV, "1")  # guard alone (a launcher that set nothing else)
    assert distributed.maybe_relaunch(cfg_with(num_gpus=0), "s.py", visible=4, execvpe=fake) == 1
    monkeypatch.delenv(distributed.LAUNCHED_ENV)
    monkeypatch.setenv("WORLD_SIZE", "4")  # under accelerate launch / torchrun: its world size wins
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.maybe_relaunch(cfg_with(num_gpus=2), "s.py", visible=4, execvpe=fake) == 4
    assert not fake.calls


def test_uneven_split_fails_before_launching(single_process):
    fake = Exec()
    with pytest.raises(TinyReasonError, match="cannot be split over 3 GPUs"):
        distributed.maybe_relaunch(cfg_with(num_gpus=0), "s.py", visible=3, execvpe=fake)
    assert not fake.calls


def test_accelerate_config_override_and_missing_file(single_process, monkeypatch):
    zero2 = distributed.CONFIG_DIR / "zero2.yaml"
    monkeypatch.setenv(distributed.CONFIG_ENV, str(zero2))
    cmd = distributed.launch_command(2, "stages/train.py")
    assert cmd[cmd.index("--config_file") + 1] == str(zero2)
    monkeypatch.setenv(distributed.CONFIG_ENV, "configs/accelerate/nope.yaml")
    with pytest.raises(TinyReasonError, match=r"nope.yaml: accelerate config not found \(fix:"):
        distributed.launch_command(2, "stages/train.py")


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    single = load_config_from_file(str(distributed.CONFIG_DIR / "multi-gpu.yaml"))
    assert single.distributed_type == "MULTI_GPU" and single.num_machines == 1
    hosts = load_config_from_file(str(distributed.CONFIG_DIR / "multi-host.yaml"))
    assert hosts.num_machines > 1 and hosts.main_process_ip and hosts.machine_rank == 0
    assert hosts.num_processes % hosts.num_machines == 0
    zero2 = load_config_from_file(str(distributed.CONFIG_DIR / "zero2.yaml"))
    assert zero2.distributed_type == "DEEPSPEED" and zero2.deepspeed_config["zero_stage"] == 2
    assert zero2.num_processes == 2 and zero2.mixed_precision == "bf16"


def test_scale_cost_counts_the_processes():
    cost = {"wall_seconds": 100.0, "gpu_seconds": 800.0, "usd": 0.4444, "num_gpus": 8, "device": "H100"}
    scaled = distributed.scale_cost(cost, 2, 2.0)
    assert (scaled["num_gpus"], scaled["gpu_seconds"], scaled["usd"]) == (2, 200.0, 0.1111)
    cpu = {"wall_seconds": 5.0, "gpu_seconds": 0.0, "usd": 0.0, "num_gpus": 0, "device": "cpu"}
    assert distributed.scale_cost(cpu, 2, 2.0) == cpu


# ---------------------------------------------------------------------------------------------
# The real train stage: 2 processes (gloo) vs 1 process with the doubled batch

MAX_STEPS = 4
# Relative, per logged step: fp32 on CPU, only the summation order differs (measured: <= 1e-7).
LOSS_RTOL = 1e-5


def curve(work: Path, name: str) -> dict[int, float]:
    rows = (work / f"dvclive/train/plots/metrics/{name}.tsv").read_text().splitlines()[1:]
    return {int(step): float(value) for step, value in (r.split("\t")[:2] for r in rows)}


@pytest.fixture(scope="module", params=["fast", "faithful"])
def ddp_runs(request, tmp_path_factory, tiny_model_dir):
    """The recipe 2 x 2 trained as 1 process (fast: one micro-batch of 4; faithful: 2 x 2) and as 2
    gloo processes (2 x 1 each), for both train.speed paths (lean loss / TRL's loss)."""
    params = tiny_run_overrides(
        tiny_model_dir, prepare={"num_samples": 24, "val_fraction": 0.25},
        # Eval batch 1: Trainer's eval loss is a mean of per-batch means, so it depends on how the
        # validation examples are batched over processes; one example per batch makes both runs alike.
        train={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": MAX_STEPS,
               "per_device_eval_batch_size": 1, "speed": request.param,
               "eval_steps": 2, "save_steps": 2, "warmup_steps": 1, "max_length": 256, "num_gpus": 1})
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = {}
    for name in ("single", "ddp"):
        work = make_workdir(tmp_path_factory.mktemp(name))
        write_params(work, params)
        if name == "single":
            proc = run_stage(work, "prepare", env=env)
            assert proc.returncode == 0, proc.stderr
            prepared = work / "data" / "prepared"
            proc = run_stage(work, "train", env=env)
        else:
            shutil.copytree(prepared, work / "data" / "prepared")
            # The command the stage execs for 2 GPUs; on a CPU-only host it starts 2 gloo processes.
            cmd = distributed.launch_command(2, "stages/train.py", port=29500 + os.getpid() % 2000)
            import subprocess

            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "PYTHONPATH": str(REPO), **env})
        (work / "train.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[name] = work
    return runs


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_whole_batch(ddp_runs):
    # Loss and gradient norm of every optimizer step: the norm would show gradients that were not
    # all-reduced (each rank stepping on its half) or scaled by the process count, even where the
    # logged loss (a mean over ranks) still agrees.
    for name, steps in (("train/loss", range(1, MAX_STEPS + 1)), ("train/grad_norm", range(1, MAX_STEPS + 1)),
                        ("eval/loss", (2, 4))):
        single, ddp = curve(ddp_runs["single"], name), curve(ddp_runs["ddp"], name)
        assert sorted(single) == sorted(ddp) == list(steps), name
        for step in single:
            assert ddp[step] == pytest.approx(single[step], rel=LOSS_RTOL), (name, step, single, ddp)
    # Training moved the weights the same way: the adapters agree too.
    from safetensors.torch import load_file

    a = load_file(ddp_runs["single"] / "models/adapter/adapter_model.safetensors")
    b = load_file(ddp_runs["ddp"] / "models/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key  # measured 1.3e-8; entries up to 0.13


@pytest.mark.slow
def test_ddp_run_splits_the_batch_and_rank_zero_alone_writes(ddp_runs):
    work = ddp_runs["ddp"]
    log = (work / "train.log").read_text()
    assert "Traceback" not in log
    metrics = json.loads((work / "metrics/train.json").read_text())
    assert metrics["data_parallel"] == {"processes": 2, "per_device_train_batch_size": 2,
                                        "gradient_accumulation_steps": 1}
    assert metrics["steps"] == MAX_STEPS
    single = json.loads((ddp_runs["single"] / "metrics/train.json").read_text())
    assert "data_parallel" not in single
    # Both processes saw the same examples per step: the tokens counted across ranks agree.
    assert metrics["train_tokens"] == single["train_tokens"]
    # One writer: the printed summary once, no second adapter / DVCLive directory or stray temporaries.
    assert log.count("train: 4 steps, best eval loss") == 1
    assert (work / "models/adapter/adapter_model.safetensors").is_file()
    params = json.loads((work / "models/adapter/params.json").read_text())
    assert params["train"]["num_gpus"] == 2 and params["train"]["gradient_accumulation_steps"] == 2
    for parent in ("models", "metrics", "dvclive", "."):
        assert not [p.name for p in (work / parent).iterdir() if p.name.startswith(".") and
                    p.name.endswith((".tmp", ".old"))], parent
    (ckpt_dir,) = (work / "checkpoints").iterdir()
    assert sorted(p.name for p in ckpt_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    plan = json.loads((ckpt_dir / "speed_plan.json").read_text())
    assert (plan["micro_batch"], plan["accumulation"]) == (2, 1)


@pytest.mark.slow
def test_grpo_trains_on_two_gloo_processes(tmp_path, tiny_model_dir):
    """GRPO through the stage as 2 processes: each rank generates its own completions (TRL, no vLLM),
    rewards are gathered for whole groups; 2 x 2 per step on one GPU = 2 x 1 on each of 2."""
    import subprocess

    work = make_workdir(tmp_path)
    (work / "data" / "prepared").mkdir(parents=True)
    row = json.dumps({"prompt": "1+1", "completion": "2", "question": "1+1", "answer": "2"})
    for split in ("train", "val"):
        (work / "data" / "prepared" / f"{split}.jsonl").write_text(row + "\n")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"problem": f"Add {i} to itself.", "answer": str(2 * i)}) + "\n"
                                for i in range(8)))
    write_params(work, tiny_run_overrides(tiny_model_dir, train={
        "method": "grpo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 2,
        "eval_steps": 2, "save_steps": 2, "warmup_steps": 0, "max_length": 256,
        "grpo": {"train_path": str(problems), "num_generations": 2, "max_completion_length": 8,
                 "max_prompt_length": 128, "rollout": "trl", "beta": 0.0, "temperature": 1.0,
                 "reward_funcs": ["format"], "reward_weights": [1.0], "held_out": 0}}))
    cmd = distributed.launch_command(2, "stages/train.py", port=31500 + os.getpid() % 2000)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((work / "metrics/train.json").read_text())
    assert metrics["method"] == "grpo" and metrics["steps"] == 2
    assert metrics["data_parallel"] == {"processes": 2, "per_device_train_batch_size": 2,
                                        "gradient_accumulation_steps": 1}
    assert (work / "models/adapter/adapter_model.safetensors").is_file()
    assert (proc.stdout + proc.stderr).count("train: 2 steps") == 1
    rewards = curve(work, "train/reward")
    assert sorted(rewards) == [1, 2]
