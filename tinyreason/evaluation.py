"""Score models on the prepared test problems: generate, grade, and compare adapter vs base.

For each benchmark: accuracy with a Wilson 95% interval, the share of answers in the expected
format, mean@k / pass@k when sampling k > 1, and for adapter vs base on the same problems the
difference with its 95% interval and an exact McNemar p-value.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import torch

from tinyreason import grading, stats
from tinyreason.config import RunConfig
from tinyreason.generation import GenerationSettings, generate_completions


def generation_settings(cfg: RunConfig, sample_index: int) -> GenerationSettings:
    e = cfg.evaluate
    # Each sample gets its own seed, derived from the run seed, so k samples differ but reproduce.
    return GenerationSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                              seed=cfg.seed + sample_index)


def predict(model, tokenizer, cfg: RunConfig, rows: list[dict], label: str) -> list[dict]:
    """One prediction record per (problem, sample): raw output, extracted answer, verdict."""
    records = []
    prompts = [r["prompt"] for r in rows]
    for sample in range(cfg.evaluate.samples):
        outputs = generate_completions(model, tokenizer, prompts, generation_settings(cfg, sample),
                                       batch_size=cfg.evaluate.batch_size)
        for row, output in zip(rows, outputs):
            grade = grading.grade_answer(output, row["gold"], row["answer_format"],
                                         numeric_tolerance=row.get("numeric_tolerance"))
            records.append({"model": label, "benchmark": row["benchmark"], "id": row["id"],
                            "sample": sample, "question": row["question"], "gold": row["gold"],
                            "output": output, "extracted": grade.extracted, "correct": grade.correct,
                            "formatted": grade.formatted})
    return records


def summarise(records: list[dict], samples: int) -> dict:
    """Accuracy (sample 0, i.e. Pass@1 for greedy), Wilson interval, format share, mean@k, pass@k."""
    first = [r for r in records if r["sample"] == 0]
    n, correct = len(first), sum(r["correct"] for r in first)
    lo, hi = stats.wilson_interval(correct, n)
    summary = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
               "accuracy_ci95_low": lo, "accuracy_ci95_high": hi,
               "format_rate": sum(r["formatted"] for r in first) / n if n else 0.0}
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


def build_metrics(records_by_model: dict[str, list[dict]], samples: int) -> dict:
    """metrics.json: {benchmark: {adapter: {...}, base: {...}, adapter_vs_base: {...}}}."""
    metrics: dict = {}
    benchmarks = sorted({r["benchmark"] for recs in records_by_model.values() for r in recs})
    for bench in benchmarks:
        entry = {}
        for label, recs in records_by_model.items():
            entry[label] = summarise([r for r in recs if r["benchmark"] == bench], samples)
        if "base" in records_by_model and "adapter" in records_by_model:
            entry["adapter_vs_base"] = compare([r for r in records_by_model["base"] if r["benchmark"] == bench],
                                               [r for r in records_by_model["adapter"] if r["benchmark"] == bench])
        metrics[bench] = entry
    return metrics


def free_model(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
