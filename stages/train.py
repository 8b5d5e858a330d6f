"""DVC stage `train`: data/prepared/{train,val}.jsonl -> models/adapter/, metrics/train.json,
dvclive/train/ (loss, eval loss, lr curves). Resumes from checkpoints/<fingerprint>/ after a kill.

Outputs appear only when training has finished: dvclive/train is written to a temporary sibling
(its curves up to the resumed checkpoint are replayed from that checkpoint's log history), then
models/adapter, dvclive/train and metrics/train.json are renamed into place.

Several GPUs (train.num_gpus, tinyreason/distributed.py): the stage relaunches itself through
`accelerate launch`, the global batch split over the processes; only global rank 0 writes outputs."""

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

from tinyreason import distributed, modeling, sft
from tinyreason.config import config_to_dict, load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import TinyReasonError, run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json

TRAIN, VAL = Path("data/prepared/train.jsonl"), Path("data/prepared/val.jsonl")
log = logging.getLogger("train")


def check_inputs(cfg) -> None:
    """Prepared data exists, and no prompt is too long to leave room for its completion."""
    for path in (TRAIN, VAL):
        if not path.is_file():
            raise TinyReasonError(f"{path}: not found (fix: run the prepare stage, `dvc repro prepare`)")
    if cfg.train.method != "sft":  # GRPO has its own prompt limit (train.grpo.max_prompt_length)
        return
    tokenizer = modeling.load_tokenizer(cfg.model)
    max_length, truncated, total = cfg.train.max_length, 0, 0
    for path in (TRAIN, VAL):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, completion = row["prompt"], row["completion"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TinyReasonError(f"{path}:{i}: not a prompt/completion row (fix: rerun the prepare "
                                      "stage, `dvc repro prepare`)") from None
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n_prompt >= max_length:
                raise TinyReasonError(f"{path}:{i}: the prompt is {n_prompt} tokens, longer than "
                                      f"train.max_length={max_length}, so nothing of its answer would be "
                                      f"trained on (fix: set train.max_length above {n_prompt})")
            total += 1
            truncated += len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]) >= max_length
    if truncated:
        log.warning("%d of %d training/validation examples are longer than train.max_length=%d and lose "
                    "the end of their answer (raise train.max_length to keep them whole)",
                    truncated, total, max_length)


def check_device(cfg, checkpoints: Path) -> None:
    """4-bit weights and 8-bit optimizers need CUDA: say so before anything is written."""
    import torch

    if torch.cuda.is_available():
        return
    modeling.quantization_config(cfg.model)  # one-line error when model.load_in_4bit asks for NF4
    sft.build_sft_config(cfg, checkpoints)  # one-line error for a bitsandbytes optimizer


def drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """A checkpoint killed while being written has no (or a truncated) trainer_state.json, which
    Trainer writes last: remove it, so the run resumes from the newest complete checkpoint."""
    if not checkpoints.is_dir():
        return
    plan = checkpoints / getattr(sft, "SPEED_PLAN_FILE", "speed_plan.json")  # written non-atomically
    try:
        if plan.is_file():
            json.loads(plan.read_text())
    except ValueError:
        plan.unlink()
    for ckpt in checkpoints.glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (killed while it was written)", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)


def replay_history(live, checkpoint: str | None) -> None:
    """Log the curves up to `checkpoint` again: a resumed run's DVCLive directory starts empty."""
    if not checkpoint:
        return
    from tinyreason.tracking import LiveMetricsCallback

    callback = LiveMetricsCallback(live)
    for entry in json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"]:
        logs = {k: v for k, v in entry.items() if k != "step"}
        callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=entry["step"]), None, logs=logs)


def shared_speed_plan(cfg, checkpoints: Path, state):
    """Several processes must micro-batch alike (DDP syncs on every backward): rank 0 plans (from its
    GPU's free memory) and writes speed_plan.json, the others read it. None for one process."""
    if state is None or cfg.train.method != "sft":
        return None
    with distributed.main_process_first(state):
        if state.is_main_process:
            return sft._plan_for(cfg, checkpoints, sft.last_checkpoint(checkpoints), modeling.load_tokenizer(cfg.model),
                                 sft.read_prompt_completion(TRAIN))
        return sft.SpeedPlan(**json.loads((checkpoints / sft.SPEED_PLAN_FILE).read_text()))


def main() -> None:
    from dvclive import Live

    recipe = load_config("params.yaml")
    check_inputs(recipe)
    # train.num_gpus > 1: this process becomes `accelerate launch ... stages/train.py` (no return).
    processes = distributed.maybe_relaunch(recipe, sys.argv[0], sys.argv[1:])
    cfg = distributed.per_rank_config(recipe, processes)  # the global batch split over the processes
    checkpoints = sft.checkpoint_dir_for(Path("checkpoints"), cfg, TRAIN, VAL)
    check_device(cfg, checkpoints)
    state = distributed.process_state()  # None for one process
    main_process = distributed.is_main_process()  # global rank 0 alone writes outputs
    with distributed.main_process_first(state):
        if main_process:
            drop_incomplete_checkpoints(checkpoints)
    plan = shared_speed_plan(cfg, checkpoints, state)
    with atomic_directory("dvclive/train") if main_process else nullcontext() as live_dir:
        live = None
        if main_process:
            live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
            replay_history(live, sft.last_checkpoint(checkpoints))
        with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
            if cfg.train.method == "grpo":  # RL with TRL's GRPOTrainer + LoRA (tinyreason/grpo.py)
                from tinyreason import grpo

                result = grpo.train_grpo(cfg, TRAIN, VAL, checkpoints, live=live)
            else:
                result = sft.train_sft(cfg, TRAIN, VAL, checkpoints, live=live, plan=plan)
        # Every process calls save_model (DeepSpeed/FSDP gather weights collectively); Trainer writes on rank 0.
        with atomic_directory("models/adapter") if main_process else tempfile.TemporaryDirectory() as out:
            result.trainer.save_model(str(out))  # the best checkpoint's LoRA weights (safetensors)
            if main_process:
                result.trainer.processing_class.save_pretrained(str(out))
                used = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, num_gpus=processes))
                atomic_write_json(Path(out) / "params.json", config_to_dict(used))
    if not main_process:
        return
    metrics = {**result.metrics, "cost": distributed.scale_cost(cost, processes, cfg.cost.usd_per_gpu_hour)}
    if processes > 1:
        metrics["data_parallel"] = {"processes": processes, "per_device_train_batch_size":
                                    cfg.train.per_device_train_batch_size,
                                    "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps}
    atomic_write_json("metrics/train.json", metrics)
    print(f"train: {metrics['steps']} steps, best eval loss {metrics['best_eval_loss']}, "
          f"{cost['wall_seconds']} s on {cost['device']} (${cost['usd']})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
