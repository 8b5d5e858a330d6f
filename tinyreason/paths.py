"""The pipeline's files, relative to the repository root (where DVC runs each stage), spelled once.

dvc.yaml declares the same paths as deps/outs; tests/test_concepts_once.py checks that no stage,
chat or export spells them again.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
CHECK_PASSED = Path("checks/passed.json")
PREPARED = Path("data/prepared")
PREPARED_TRAIN, PREPARED_VAL, PREPARED_TEST = (PREPARED / f"{split}.jsonl" for split in ("train", "val", "test"))
ADAPTER = Path("models/adapter")
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file in an adapter directory: its presence marks one
EXPORT = Path("models/export")
CHECKPOINTS = Path("checkpoints")
PREDICTIONS = Path("predictions")
METRICS = Path("metrics.json")  # evaluate: accuracy per benchmark
PREPARE_METRICS, TRAIN_METRICS, EVALUATE_BASE_METRICS, EVALUATE_METRICS = (
    Path("metrics") / f"{stage}.json" for stage in ("prepare", "train", "evaluate_base", "evaluate"))
# evaluate_base: the base model's answers (predictions/<benchmark>.jsonl), its metrics per benchmark and
# the inputs those answers were computed from
BASE_EVAL = Path("base_eval")
BASE_EVAL_PREDICTIONS, BASE_EVAL_METRICS, BASE_EVAL_INPUTS = (
    BASE_EVAL / name for name in ("predictions", "metrics.json", "inputs.json"))
TRAIN_LIVE, EVAL_LIVE = Path("dvclive/train"), Path("dvclive/eval")
