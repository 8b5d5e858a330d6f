"""DVC stage `evaluate`: base model and base + adapter on data/prepared/test.jsonl ->
metrics.json (per benchmark, with intervals and a paired test), predictions/<benchmark>.jsonl,
metrics/evaluate.json (cost), dvclive/eval/ (accuracy per benchmark)."""

import json
import logging
import sys
from pathlib import Path

from tinyreason import evaluation, modeling
from tinyreason.config import load_config
from tinyreason.cost import measure_cost
from tinyreason.errors import TinyReasonError, run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json, atomic_write_jsonl

TEST, ADAPTER = Path("data/prepared/test.jsonl"), Path("models/adapter")


def check_fits_context(model, tokenizer, cfg, rows: list[dict]) -> None:
    """The longest prompt plus evaluate.max_new_tokens must fit in the model's context window."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    context = getattr(config, "max_position_embeddings", None)
    if not context or not rows:
        return
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]]
    longest = max(range(len(rows)), key=lengths.__getitem__)
    need = lengths[longest] + cfg.evaluate.max_new_tokens
    if need > context:
        row = rows[longest]
        raise TinyReasonError(f"{TEST}: {row['benchmark']} problem {row['id']!r} has a {lengths[longest]}-token "
                              f"prompt; with evaluate.max_new_tokens={cfg.evaluate.max_new_tokens} that is {need} "
                              f"tokens, past the model's context of {context} (fix: set evaluate.max_new_tokens "
                              f"<= {max(context - lengths[longest], 0)}, or limit that benchmark)")


def main() -> None:
    from dvclive import Live

    cfg = load_config("params.yaml")
    if not TEST.is_file():
        raise TinyReasonError(f"{TEST}: not found (fix: run the prepare stage, `dvc repro prepare`)")
    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()]
    modeling.check_adapter_matches(ADAPTER, cfg.model)
    tokenizer = modeling.load_tokenizer(cfg.model)
    records = {}
    with measure_cost(cfg.cost.usd_per_gpu_hour) as cost:
        if cfg.evaluate.evaluate_base:
            model = modeling.load_base_model(cfg.model)
            check_fits_context(model, tokenizer, cfg, rows)
            records["base"] = evaluation.predict(model, tokenizer, cfg, rows, "base")
            evaluation.free_model(model)
        model = modeling.load_adapter_model(cfg.model, ADAPTER, merge=True)
        check_fits_context(model, tokenizer, cfg, rows)
        records["adapter"] = evaluation.predict(model, tokenizer, cfg, rows, "adapter")
    metrics = evaluation.build_metrics(records, cfg.evaluate.samples)

    with atomic_directory("predictions") as out:
        for bench in metrics:
            atomic_write_jsonl(out / f"{bench}.jsonl",
                               [r for recs in records.values() for r in recs if r["benchmark"] == bench])
    with atomic_directory("dvclive/eval") as live_dir:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
        for bench, entry in metrics.items():
            for label in records:
                live.log_metric(f"{bench}/{label}_accuracy", entry[label]["accuracy"], plot=False)
        live.end()
    atomic_write_json("metrics/evaluate.json", {"cost": cost})
    atomic_write_json("metrics.json", metrics)
    for bench, entry in metrics.items():
        line = ", ".join(f"{label} {entry[label]['accuracy']:.1%}" for label in records)
        print(f"evaluate {bench} (n={entry['adapter']['n']}): {line}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
