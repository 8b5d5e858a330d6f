"""DVC stage `train`: data/prepared/{train,val}.jsonl -> models/adapter/, metrics/train.json,
dvclive/train/ (loss, eval loss, lr curves). Resumes from checkpoints/<fingerprint>/ after a kill."""

import logging
import sys
from pathlib import Path

from tinyreason import sft
from tinyreason.config import config_to_dict, load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json

TRAIN, VAL = Path("data/prepared/train.jsonl"), Path("data/prepared/val.jsonl")


def main() -> None:
    from dvclive import Live

    cfg = load_config("params.yaml")
    checkpoints = sft.checkpoint_dir_for(Path("checkpoints"), cfg, TRAIN, VAL)
    live = Live("dvclive/train", dvcyaml=None, save_dvc_exp=False, report=None)
    with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
        if cfg.train.method == "grpo":  # RL with TRL's GRPOTrainer + LoRA (tinyreason/grpo.py)
            from tinyreason import grpo

            result = grpo.train_grpo(cfg, TRAIN, VAL, checkpoints, live=live)
        else:
            result = sft.train_sft(cfg, TRAIN, VAL, checkpoints, live=live)
    with atomic_directory("models/adapter") as out:
        result.trainer.save_model(str(out))  # the best checkpoint's LoRA weights (safetensors)
        result.trainer.processing_class.save_pretrained(str(out))
        atomic_write_json(out / "params.json", config_to_dict(cfg))
    metrics = {**result.metrics, "cost": cost}
    atomic_write_json("metrics/train.json", metrics)
    print(f"train: {metrics['steps']} steps, best eval loss {metrics['best_eval_loss']}, "
          f"{cost['wall_seconds']} s on {cost['device']} (${cost['usd']})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
