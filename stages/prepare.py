"""DVC stage `prepare`: params.yaml -> data/prepared/{train,val,test}.jsonl + metrics/prepare.json."""

import logging
import sys

from tinyreason import data, modeling, paths
from tinyreason.config import load_config
from tinyreason.errors import run_stage
from tinyreason.outputs import atomic_write_files, atomic_write_json, jsonl_text


def main() -> None:
    cfg = load_config(paths.PARAMS)
    tokenizer = modeling.load_tokenizer(cfg.model)
    splits, report = data.build_prepared_splits(cfg, tokenizer)
    # Three outputs (train reads train/val, evaluate reads test), replaced together.
    atomic_write_files({paths.PREPARED / f"{name}.jsonl": jsonl_text(rows) for name, rows in splits.items()})
    atomic_write_json(paths.PREPARE_METRICS, report)
    print(f"prepare: {report['train']} train / {report['val']} val / {report['test']} test rows "
          f"({report['source_rows_dropped']} malformed source rows dropped)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_stage(main))
