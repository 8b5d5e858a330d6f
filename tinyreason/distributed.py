"""Data-parallel training on several GPUs through `accelerate launch` (torch.distributed underneath).

The train stage is started as one process (`python stages/train.py`, as DVC runs it). When
`train.num_gpus` asks for more than one GPU (0 = every visible GPU), `maybe_relaunch` replaces that
process with `accelerate launch --num_processes N stages/train.py`; each of the N processes then
sees the launcher's WORLD_SIZE / RANK / LOCAL_RANK and trains one data-parallel replica. The
launcher's variables, and TINYREASON_LAUNCHED set before the relaunch, stop a launched process from
relaunching itself. A run started under a launcher by hand (several hosts, see docs/multi-gpu.md)
is used as it is.

The recipe's batch is global: per_device_train_batch_size x gradient_accumulation_steps examples per
optimizer step. `per_rank_config` splits it over the processes (accumulation first, then the
micro-batch), so N GPUs take the same optimizer steps on the same examples as one GPU, and Trainer
normalises the loss by the token count of the whole step across processes
(`average_tokens_across_devices`). A batch that does not split evenly is a one-line error.

Only the process of global rank 0 writes the stage's outputs (stages/train.py checks `is_main_process`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from tinyreason.errors import TinyReasonError

log = logging.getLogger(__name__)

LAUNCHED_ENV = "TINYREASON_LAUNCHED"          # set on the relaunch: a loop guard
CONFIG_ENV = "TINYREASON_ACCELERATE_CONFIG"   # another accelerate config file (e.g. ZeRO-2) for the relaunch
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
DEFAULT_CONFIG = CONFIG_DIR / "multi-gpu.yaml"
# What a launcher (accelerate launch, torchrun, deepspeed, mpirun/SLURM through accelerate) sets.
_LAUNCHER_VARS = ("LOCAL_RANK", "WORLD_SIZE", "RANK")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Global rank 0 (across every host): the one process that writes outputs."""
    return rank() == 0


def is_launched(env=None) -> bool:
    """True inside a launcher's process (or after our own relaunch): never relaunch from here."""
    env = os.environ if env is None else env
    return bool(env.get(LAUNCHED_ENV)) or any(k in env for k in _LAUNCHER_VARS)


def gpus_to_use(num_gpus: int, visible: int) -> int:
    """train.num_gpus (0: every visible GPU) -> how many processes to run on this host."""
    if num_gpus == 0:
        return max(visible, 1)
    if num_gpus > 1 and num_gpus > visible:
        raise TinyReasonError(f"train.num_gpus: {num_gpus} but {visible} CUDA GPU(s) are visible (fix: set "
                              f"train.num_gpus to at most {visible}, or 0 for every visible GPU)")
    return num_gpus


def split_batch(per_device: int, accumulation: int, processes: int) -> tuple[int, int]:
    """The recipe's (micro-batch, accumulation) for one GPU -> the same global batch over `processes`.

    Divides the accumulation when it can; otherwise the largest micro-batch not above the recipe's
    that splits the per-process share evenly. Raises a one-line error when the global batch is not a
    multiple of `processes`.
    """
    total = per_device * accumulation
    if processes <= 1:
        return per_device, accumulation
    if total % processes:
        raise TinyReasonError(
            f"train.per_device_train_batch_size x train.gradient_accumulation_steps = {per_device} x {accumulation}"
            f" = {total} examples per step cannot be split over {processes} GPUs (fix: make it a multiple of "
            f"{processes}, e.g. gradient_accumulation_steps={-(-accumulation // processes) * processes}, or set "
            f"train.num_gpus to a divisor of {total})")
    share = total // processes
    if accumulation % processes == 0:
        return per_device, accumulation // processes
    micro = max(d for d in range(1, min(per_device, share) + 1) if share % d == 0)
    return micro, share // micro


def per_rank_config(cfg, processes: int):
    """`cfg` with train.per_device_train_batch_size / gradient_accumulation_steps for one of
    `processes` data-parallel processes (same global batch) and train.num_gpus = `processes`, so the
    checkpoint fingerprint (checkpoints.checkpoint_dir_for) tells runs on different GPU counts apart."""
    t = cfg.train
    micro, accumulation = split_batch(t.per_device_train_batch_size, t.gradient_accumulation_steps, processes)
    train = dataclasses.replace(t, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
                                num_gpus=processes)
    return dataclasses.replace(cfg, train=train)


def launch_command(processes: int, script: str, args: list[str] | None = None, *,
                   config_file: str | Path | None = None, port: int | None = None) -> list[str]:
    """`accelerate launch` (this interpreter's accelerate) running `script` on `processes` processes
    of this host. The config file sets the engine (DDP by default, ZeRO-2 with zero2.yaml)."""
    config_file = Path(config_file or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not config_file.is_file():
        raise TinyReasonError(f"{config_file}: accelerate config not found (fix: set {CONFIG_ENV} to a file "
                              f"under {CONFIG_DIR}, or unset it)")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--num_processes", str(processes), "--num_machines", "1"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd + [script, *(args or [])]


def maybe_relaunch(cfg, script: str, args: list[str] | None = None, *, visible: int | None = None,
                   execvpe=os.execvpe) -> int:
    """Relaunch `script` on several GPUs when train.num_gpus asks for it; else return the number of
    data-parallel processes this process is one of (the launcher's WORLD_SIZE, or 1).

    Checks the batch split before anything starts. On a relaunch `execvpe` replaces this process
    and does not return.
    """
    if is_launched():
        processes = world_size()
        per_rank_config(cfg, processes)  # a one-line error for an uneven split, on every rank
        return processes
    if visible is None:
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = gpus_to_use(cfg.train.num_gpus, visible)
    if processes <= 1:
        return 1
    per_rank_config(cfg, processes)
    cmd = launch_command(processes, script, args)
    log.info("train.num_gpus=%s, %d GPU(s) visible: relaunching as %s", cfg.train.num_gpus, visible, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    execvpe(cmd[0], cmd, {**os.environ, LAUNCHED_ENV: "1"})
    raise AssertionError("unreachable")  # an injected execvpe returned (tests)


def process_state():
    """accelerate's PartialState once several processes run, else None: the process group is up (for
    barriers) and this process is pinned to its GPU (LOCAL_RANK) before the model loads, since
    modeling moves it to "cuda", the current device. Trainer resets accelerate's state when it
    builds its own; the torch.distributed group and the current device stay."""
    if world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def scale_cost(cost: dict, processes: int, usd_per_gpu_hour: float) -> dict:
    """measure_cost counts the GPUs visible on rank 0's host; a launched run used `processes` GPUs."""
    if processes <= 1 or not cost.get("num_gpus"):
        return cost
    gpu_seconds = cost["wall_seconds"] * processes
    return {**cost, "num_gpus": processes, "gpu_seconds": round(gpu_seconds, 2),
            "usd": round(gpu_seconds / 3600 * usd_per_gpu_hour, 4)}


def main_process_first(state):
    """accelerate's `main_process_first` (rank 0 runs the block, then the others), or no-op for one process."""
    from contextlib import nullcontext

    return state.main_process_first() if state is not None else nullcontext()
