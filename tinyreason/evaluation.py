"""Score models on the prepared test problems: generate, grade, and compare adapter vs base.

For each benchmark: accuracy with a Wilson 95% interval, the share of answers in the expected
format, the share of outputs cut at evaluate.max_new_tokens and the mean output length, mean@k /
pass@k when the benchmark samples k > 1 (evaluate.benchmarks.<name>.samples, else
evaluate.samples), and for adapter vs base on the same problems the difference with its 95%
interval and an exact McNemar p-value.

The base model is scored by its own stage (evaluate_base -> paths.BASE_EVAL), whose inputs are nothing
from training, so DVC skips it (or restores it from its run cache) in an experiment that changes only
training; the evaluate stage scores the adapter and pairs it with those base answers.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch

from tinyreason import grading, paths, sources, stats
from tinyreason.config import RunConfig, config_to_dict
from tinyreason.errors import TinyReasonError
from tinyreason.generation import GenerationSettings, generate_completions
from tinyreason.outputs import atomic_directory, atomic_write_json, atomic_write_jsonl

# evaluate.* params that do not change the base model's answers. Every other one does: the evaluate_base
# stage lists them under its params in dvc.yaml (tests/test_dvc_deps.py checks) and in inputs.json.
NOT_BASE_INPUTS = ("adapter",)


def generation_settings(cfg: RunConfig, sample_index: int) -> GenerationSettings:
    e = cfg.evaluate
    # Each sample gets its own seed, derived from the run seed, so k samples differ but reproduce.
    return GenerationSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                              seed=cfg.seed + sample_index)


def load_test_rows(path: Path) -> list[dict]:
    """The prepared test problems (data/prepared/test.jsonl: rendered prompts of every benchmark)."""
    if not path.is_file():
        raise TinyReasonError(f"{path}: not found (fix: run the prepare stage, `dvc repro prepare`)")
    return sources.read_jsonl(path, "rerun the prepare stage, `dvc repro prepare`")


def score_model(model, tokenizer, cfg: RunConfig, rows: list[dict], label: str, source: Path) -> list[dict]:
    """predict() after the context check, then free the model's memory (pass the model straight from the
    loader: this function then holds its last reference)."""
    check_fits_context(model, tokenizer, cfg, rows, source)
    records = predict(model, tokenizer, cfg, rows, label)
    del model
    release_memory()
    return records


def predict(model, tokenizer, cfg: RunConfig, rows: list[dict], label: str) -> list[dict]:
    """One prediction record per (problem, sample): id, sample index, raw output, its length in
    tokens, whether it was cut at max_new_tokens, the extracted answer and the verdict."""
    records = []
    samples = {name: cfg.evaluate.samples_of(name) for name in {r["benchmark"] for r in rows}}
    for sample in range(max(samples.values(), default=0)):
        # sample s runs every problem whose benchmark takes more than s samples, all in one call,
        # so each sample index keeps one seed (cfg.seed + s) across benchmarks
        todo = [r for r in rows if samples[r["benchmark"]] > sample]
        outputs = generate_completions(model, tokenizer, [r["prompt"] for r in todo],
                                       generation_settings(cfg, sample), batch_size=cfg.evaluate.batch_size)
        for row, out in zip(todo, outputs):
            grade = grading.grade_answer(out.text, row["gold"], row["answer_format"],
                                         numeric_tolerance=row.get("numeric_tolerance"))
            records.append({"model": label, "benchmark": row["benchmark"], "id": row["id"],
                            "sample": sample, "question": row["question"], "gold": row["gold"],
                            "output": out.text, "num_tokens": out.num_tokens, "truncated": out.truncated,
                            "extracted": grade.extracted, "correct": grade.correct,
                            "formatted": grade.formatted})
    return records


def summarise(records: list[dict], samples: int) -> dict:
    """Accuracy (sample 0, i.e. Pass@1 for greedy), Wilson interval, format share, the share of
    outputs cut at the token cap and the mean output length (both over every sample), and with
    samples k > 1 mean@k and pass@k."""
    first = [r for r in records if r["sample"] == 0]
    n, correct = len(first), sum(r["correct"] for r in first)
    lo, hi = stats.wilson_interval(correct, n)
    summary = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
               "accuracy_ci95_low": lo, "accuracy_ci95_high": hi,
               "format_rate": sum(r["formatted"] for r in first) / n if n else 0.0,
               # correct answers found only through the grader's fallback form (a `**Final Answer:**` line on
               # a boxed benchmark, or the reverse): counted in accuracy, shown here so that part is visible
               "correct_unformatted": sum(r["correct"] and not r["formatted"] for r in first),
               # an answer cut at the cap is usually wrong for lack of room, not of skill: report it
               "truncated_rate": sum(r["truncated"] for r in records) / len(records) if records else 0.0,
               "mean_output_tokens": sum(r["num_tokens"] for r in records) / len(records) if records else 0.0}
    if samples > 1:
        per_problem = defaultdict(list)
        for r in records:
            per_problem[r["id"]].append(r["correct"])
        summary[f"mean_at_{samples}"] = stats.mean_at_k(list(per_problem.values()))
        summary[f"pass_at_{samples}"] = sum(stats.pass_at_k(len(v), sum(v), samples)
                                            for v in per_problem.values()) / len(per_problem)
    return summary


def compare(base: list[dict], adapter: list[dict]) -> dict:
    """Paired comparison on the same problems (sample 0 of each)."""
    by_id = {r["id"]: r["correct"] for r in base if r["sample"] == 0}
    ids = [r["id"] for r in adapter if r["sample"] == 0 and r["id"] in by_id]
    adapter_by_id = {r["id"]: r["correct"] for r in adapter if r["sample"] == 0}
    return stats.paired_difference([by_id[i] for i in ids], [adapter_by_id[i] for i in ids])


def build_metrics(records_by_model: dict[str, list[dict]], samples: int | Mapping[str, int]) -> dict:
    """metrics.json: {benchmark: {adapter: {...}, base: {...}, adapter_vs_base: {...}}}.

    samples: k per benchmark (`{name: cfg.evaluate.samples_of(name)}`), or one k for all."""
    metrics: dict = {}
    benchmarks = sorted({r["benchmark"] for recs in records_by_model.values() for r in recs})
    for bench in benchmarks:
        k = samples if isinstance(samples, int) else samples[bench]
        entry = {}
        for label, recs in records_by_model.items():
            entry[label] = summarise([r for r in recs if r["benchmark"] == bench], k)
        if "base" in records_by_model and "adapter" in records_by_model:
            entry["adapter_vs_base"] = compare([r for r in records_by_model["base"] if r["benchmark"] == bench],
                                               [r for r in records_by_model["adapter"] if r["benchmark"] == bench])
        metrics[bench] = entry
    return metrics


def base_inputs(cfg: RunConfig, test_path: Path) -> dict:
    """What the base model's answers depend on, as plain data keyed like params.yaml."""
    evaluate = {k: v for k, v in config_to_dict(cfg.evaluate).items() if k not in NOT_BASE_INPUTS}
    return json.loads(json.dumps({"seed": cfg.seed, "model": config_to_dict(cfg.model), "evaluate": evaluate,
                                  str(test_path): hashlib.sha256(test_path.read_bytes()).hexdigest()}))


def save_base_results(records: list[dict], cfg: RunConfig, test_path: Path) -> dict:
    """Write paths.BASE_EVAL in one rename; returns its per-benchmark metrics ({} when nothing was scored)."""
    samples = {r["benchmark"]: cfg.evaluate.samples_of(r["benchmark"]) for r in records}
    metrics = build_metrics({"base": records}, samples) if records else {}
    with atomic_directory(paths.BASE_EVAL) as tmp:
        atomic_write_json(tmp / paths.BASE_EVAL_INPUTS.name, base_inputs(cfg, test_path))
        atomic_write_json(tmp / paths.BASE_EVAL_METRICS.name, metrics)
        for bench in metrics:
            atomic_write_jsonl(tmp / paths.BASE_EVAL_PREDICTIONS.name / f"{bench}.jsonl",
                               [r for r in records if r["benchmark"] == bench])
    return metrics


def _first_difference(saved, now, key: str = ""):
    """(dotted key, saved value, current value) of the first place two plain-data trees differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for name in sorted(set(saved) | set(now)):
            if saved.get(name) != now.get(name):
                return _first_difference(saved.get(name), now.get(name), f"{key}.{name}" if key else name)
    return key, saved, now


def load_base_records(cfg: RunConfig, test_path: Path) -> list[dict]:
    """The base model's prediction records from paths.BASE_EVAL, refused when they were computed from
    other inputs than the current params and test file (a stage run by hand out of order)."""
    inputs = paths.BASE_EVAL_INPUTS
    fix = "(fix: run the evaluate_base stage first: `dvc repro`, or `python stages/evaluate_base.py`)"
    if not inputs.is_file():
        raise TinyReasonError(f"{inputs}: not found {fix}")
    key, saved, now = _first_difference(json.loads(inputs.read_text()), base_inputs(cfg, test_path))
    if key:
        raise TinyReasonError(f"{inputs}: the base model's answers were computed with {key} = {saved!r}, "
                              f"now {now!r} {fix}")
    return [row for path in sorted(paths.BASE_EVAL_PREDICTIONS.glob("*.jsonl"))
            for row in sources.read_jsonl(path, "rerun the evaluate_base stage, `dvc repro`")]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_fits_context(model, tokenizer, cfg: RunConfig, rows: list[dict], source) -> None:
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
        raise TinyReasonError(f"{source}: {row['benchmark']} problem {row['id']!r} has a {lengths[longest]}-token "
                              f"prompt; with evaluate.max_new_tokens={cfg.evaluate.max_new_tokens} that is {need} "
                              f"tokens, past the model's context of {context} (fix: set evaluate.max_new_tokens "
                              f"<= {max(context - lengths[longest], 0)}, or limit that benchmark)")


def accuracy_datapoints(metrics: dict) -> list[dict]:
    """Rows for DVCLive's bar plot: one per benchmark and model."""
    return [{"benchmark": f"{bench} ({label})", "accuracy": entry[label]["accuracy"]}
            for bench, entry in metrics.items() for label in ("base", "adapter") if label in entry]


def comparison_table(metrics: dict):
    """A rich Table: per benchmark, base and adapter accuracy with 95% intervals, the paired
    difference with its interval, and McNemar's p-value."""
    from rich.table import Table

    def acc(s):
        return f"{s['accuracy']:.1%} [{s['accuracy_ci95_low']:.1%}, {s['accuracy_ci95_high']:.1%}]"

    table = Table(title="adapter vs base (95% intervals; exact McNemar p)")
    for column in ("benchmark", "n", "base", "adapter", "difference", "p"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for bench, entry in metrics.items():
        paired = entry.get("adapter_vs_base")
        # Either model may be absent: evaluate.evaluate_base: false, or evaluate.adapter: none.
        table.add_row(
            bench, str((entry.get("adapter") or entry["base"])["n"]),
            acc(entry["base"]) if "base" in entry else "-", acc(entry["adapter"]) if "adapter" in entry else "-",
            f"{paired['difference']:+.1%} [{paired['ci_low']:+.1%}, {paired['ci_high']:+.1%}]" if paired else "-",
            f"{paired['p_value']:.3g}" if paired else "-")
    return table


def print_comparison(metrics: dict) -> None:
    import sys

    from rich.console import Console

    # Piped output (DVC logs, CI) would be wrapped at 80 columns: give the table room instead.
    Console(width=None if sys.stdout.isatty() else 130).print(comparison_table(metrics))


def _text_at_revision(path, rev: str) -> str:
    """A committed file as of `rev`: a git revision or a DVC experiment's name (DVC resolves it: an
    experiment is a git commit under refs/exps/, with metrics.json in it since it is not cached)."""
    import subprocess

    from dvc.scm import SCM, RevError, resolve_rev

    scm = SCM(".")
    try:
        sha = resolve_rev(scm, rev)
    except RevError as exc:
        raise TinyReasonError(f"{path} at {rev}: {exc} (fix: name an experiment `dvc exp show` lists, or a "
                              "commit)") from None
    finally:
        scm.close()
    proc = subprocess.run(["git", "show", f"{sha}:./{path}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TinyReasonError(f"{path} at {rev}: not in that run (fix: name a run whose evaluate stage finished)")
    return proc.stdout


def compare_command(args) -> int:
    import json
    from pathlib import Path

    path = Path(args.metrics)
    if args.rev:
        print_comparison(json.loads(_text_at_revision(path, args.rev)))
        return 0
    if not path.is_file():
        raise TinyReasonError(f"{path}: not found (fix: run the evaluate stage, `dvc repro`; after a run in a "
                              "temporary copy, `tinyreason compare --rev NAME` or `dvc exp apply NAME`)")
    print_comparison(json.loads(path.read_text()))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="print adapter vs base per benchmark from metrics.json",
                                   description="Adapter vs base per benchmark, with 95% intervals and "
                                               "McNemar's p. To compare two experiments, use "
                                               "`dvc metrics diff` or `dvc exp show`.")
    parser.add_argument("metrics", nargs="?", default=str(paths.METRICS))
    parser.add_argument("--rev", metavar="REV", help="read metrics.json as of a commit or a DVC experiment's "
                                                     "name (default: the file in this checkout)")
    parser.set_defaults(func=compare_command)
