"""DVC stage `evaluate`: the base model + adapter on data/prepared/test.jsonl, paired with the base
model's own answers from the evaluate_base stage (base_eval/) -> metrics.json (per benchmark, with
intervals and a paired test), predictions/<benchmark>.jsonl (both models), metrics/evaluate.json (the
cost of scoring the adapter), dvclive/eval/ (accuracy per benchmark)."""

import logging
import sys

from tinyreason import evaluation, modeling, paths
from tinyreason.config import load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json, atomic_write_jsonl

TEST, ADAPTER = paths.PREPARED_TEST, paths.ADAPTER


def main() -> None:
    from dvclive import Live

    cfg = load_config(paths.PARAMS)
    rows = evaluation.load_test_rows(TEST)
    with_adapter = cfg.evaluate.adapter == "trained"  # none: the base model alone, no adapter needed
    if with_adapter:
        modeling.check_adapter_matches(ADAPTER, cfg.model)
    records = {}
    if cfg.evaluate.evaluate_base:  # scored by the evaluate_base stage, which training does not rerun
        records["base"] = evaluation.load_base_records(cfg, TEST)
    with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
        if with_adapter:
            tokenizer = modeling.load_tokenizer(cfg.model)
            records["adapter"] = evaluation.score_model(modeling.load_adapter_model(cfg.model, ADAPTER, merge=True),
                                                        tokenizer, cfg, rows, "adapter", TEST)
    samples = {r["benchmark"]: cfg.evaluate.samples_of(r["benchmark"]) for r in rows}  # k per benchmark
    metrics = evaluation.build_metrics(records, samples)

    with atomic_directory(paths.PREDICTIONS) as out:
        for bench in metrics:
            atomic_write_jsonl(out / f"{bench}.jsonl",
                               [r for recs in records.values() for r in recs if r["benchmark"] == bench])
    with atomic_directory(paths.EVAL_LIVE) as live_dir:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
        for bench, entry in metrics.items():
            for label in records:
                live.log_metric(f"{bench}/{label}_accuracy", entry[label]["accuracy"], plot=False)
        # One bar per (benchmark, model): `dvc plots show/diff` draws accuracy per benchmark.
        live.log_plot("accuracy", evaluation.accuracy_datapoints(metrics), x="accuracy", y="benchmark",
                      template="bar_horizontal_sorted", title="Accuracy per benchmark")
        live.end()
    atomic_write_json(paths.EVALUATE_METRICS, {"cost": cost})
    atomic_write_json(paths.METRICS, metrics)
    evaluation.print_comparison(metrics)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
