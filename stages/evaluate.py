"""DVC stage `evaluate`: base model and base + adapter on data/prepared/test.jsonl ->
metrics.json (per benchmark, with intervals and a paired test), predictions/<benchmark>.jsonl,
metrics/evaluate.json (cost), dvclive/eval/ (accuracy per benchmark)."""

import logging
import sys

from tinyreason import evaluation, modeling, paths, sources
from tinyreason.config import load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import TinyReasonError, run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json, atomic_write_jsonl

TEST, ADAPTER = paths.PREPARED_TEST, paths.ADAPTER


def main() -> None:
    from dvclive import Live

    cfg = load_config(paths.PARAMS)
    if not TEST.is_file():
        raise TinyReasonError(f"{TEST}: not found (fix: run the prepare stage, `dvc repro prepare`)")
    rows = sources.read_jsonl(TEST, "rerun the prepare stage, `dvc repro prepare`")
    with_adapter = cfg.evaluate.adapter == "trained"  # none: the base model alone, no adapter needed
    if with_adapter:
        modeling.check_adapter_matches(ADAPTER, cfg.model)
    tokenizer = modeling.load_tokenizer(cfg.model)
    records = {}
    with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
        if cfg.evaluate.evaluate_base:
            model = modeling.load_base_model(cfg.model)
            evaluation.check_fits_context(model, tokenizer, cfg, rows, TEST)
            records["base"] = evaluation.predict(model, tokenizer, cfg, rows, "base")
            evaluation.free_model(model)
        if with_adapter:
            model = modeling.load_adapter_model(cfg.model, ADAPTER, merge=True)
            evaluation.check_fits_context(model, tokenizer, cfg, rows, TEST)
            records["adapter"] = evaluation.predict(model, tokenizer, cfg, rows, "adapter")
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
