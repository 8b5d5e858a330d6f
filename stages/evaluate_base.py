"""DVC stage `evaluate_base`: the base model alone on data/prepared/test.jsonl -> base_eval/
(predictions/<benchmark>.jsonl, metrics.json per benchmark, inputs.json), metrics/evaluate_base.json
(cost). Nothing from training is an input, so an experiment that changes only training skips this
stage (or DVC restores it from its run cache); the evaluate stage pairs these answers with the adapter's."""

import logging
import sys

from tinyreason import evaluation, modeling, paths
from tinyreason.config import load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_write_json

TEST = paths.PREPARED_TEST


def main() -> None:
    cfg = load_config(paths.PARAMS)
    rows = evaluation.load_test_rows(TEST)
    records = []
    with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
        if cfg.evaluate.evaluate_base:  # false: nothing scored; the evaluate stage reads no base answers
            tokenizer = modeling.load_tokenizer(cfg.model)
            records = evaluation.score_model(modeling.load_base_model(cfg.model), tokenizer, cfg, rows, "base", TEST)
    metrics = evaluation.save_base_results(records, cfg, TEST)
    atomic_write_json(paths.EVALUATE_BASE_METRICS, {"cost": cost})
    if metrics:
        evaluation.print_comparison(metrics)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
