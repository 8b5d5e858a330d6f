"""DVC stage `train`: data/prepared/{train,val}.jsonl -> models/adapter/, metrics/train.json,
dvclive/train/ (loss, eval loss, lr curves). Resumes from checkpoints/<fingerprint>/ after a kill.

Outputs appear only when training has finished: dvclive/train is written to a temporary sibling
(its curves up to the resumed checkpoint are replayed from that checkpoint's log history), then
models/adapter, dvclive/train and metrics/train.json are renamed into place.

Several GPUs (train.num_gpus, tinyreason/distributed.py): the stage relaunches itself through
`accelerate launch`, the global batch split over the processes; only global rank 0 writes outputs."""

import dataclasses
import logging
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from tinyreason import checkpoints, data, distributed, modeling, paths, sft, tracking, training
from tinyreason.config import config_to_dict, load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json

TRAIN, VAL = paths.PREPARED_TRAIN, paths.PREPARED_VAL


def main() -> None:
    from dvclive import Live

    recipe = load_config(paths.PARAMS)
    sft.check_training_inputs(recipe, TRAIN, VAL)
    # train.num_gpus > 1: this process becomes `accelerate launch ... stages/train.py` (no return).
    processes = distributed.maybe_relaunch(recipe, sys.argv[0], sys.argv[1:])
    cfg = distributed.per_rank_config(recipe, processes)  # the global batch split over the processes
    # GRPO's own local training file shapes training too: after an edit, start over, never resume
    inputs = [TRAIN, VAL, *filter(None, [data.grpo_local_file(cfg)])]
    training.check_device_support(cfg, paths.CHECKPOINTS)
    state = distributed.process_state()  # None for one process
    main_process = distributed.is_main_process()  # global rank 0 alone writes outputs
    run_dir = checkpoints.run_directory(cfg, inputs, state)  # resumed after a kill, fresh after a finish
    plan = sft.shared_speed_plan(cfg, run_dir, state, TRAIN)
    with atomic_directory(paths.TRAIN_LIVE) if main_process else nullcontext() as live_dir:
        live = None
        if main_process:
            live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
            tracking.replay_history(live, checkpoints.last_checkpoint(run_dir))
        with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
            if cfg.train.method == "grpo":  # RL with TRL's GRPOTrainer + LoRA (tinyreason/grpo.py)
                from tinyreason import grpo

                result = grpo.train_grpo(cfg, TRAIN, run_dir, live=live)
            else:
                result = sft.train_sft(cfg, TRAIN, VAL, run_dir, live=live, plan=plan)
        if main_process:  # the other method's curves, empty: dvc plots then report none missing
            tracking.write_empty_curves(live_dir)
        # Every process calls save_model (DeepSpeed/FSDP gather weights collectively); Trainer writes on rank 0.
        with atomic_directory(paths.ADAPTER) if main_process else tempfile.TemporaryDirectory() as out:
            result.trainer.save_model(str(out))  # the best checkpoint's LoRA weights (safetensors)
            if main_process:
                result.trainer.processing_class.save_pretrained(str(out))
                modeling.stabilise_adapter_config(out)
                used = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, num_gpus=processes))
                atomic_write_json(Path(out) / "params.json", config_to_dict(used))
    if not main_process:
        return
    metrics = {**result.metrics, "cost": distributed.scale_cost(cost, processes, cfg.cost.usd_per_gpu_hour)}
    if processes > 1:
        metrics["data_parallel"] = {"processes": processes, "per_device_train_batch_size":
                                    cfg.train.per_device_train_batch_size,
                                    "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps}
    atomic_write_json(paths.TRAIN_METRICS, metrics)
    print(f"train: {metrics['steps']} steps, best eval loss {metrics['best_eval_loss']}, "
          f"{cost['wall_seconds']} s on {cost['device']} (${cost['usd']})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
