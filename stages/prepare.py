"""DVC stage `prepare`: params.yaml -> data/prepared/{train,val,test}.jsonl + metrics/prepare.json."""

import logging
import sys

from tinyreason import data, modeling
from tinyreason.config import load_config
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_directory, atomic_write_json, atomic_write_jsonl


def main() -> None:
    cfg = load_config("params.yaml")
    tokenizer = modeling.load_tokenizer(cfg.model)
    splits, report = data.build_prepared_splits(cfg, tokenizer)
    with atomic_directory("data/prepared") as out:
        for name, rows in splits.items():
            atomic_write_jsonl(out / f"{name}.jsonl", rows)
    atomic_write_json("metrics/prepare.json", report)
    print(f"prepare: {report['train']} train / {report['val']} val / {report['test']} test rows "
          f"({report['source_rows_dropped']} malformed source rows dropped)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
