"""The train stage's run directory, checkpoints/<fingerprint>/, for both methods: its whole lifecycle.

    run_directory(cfg, inputs, state) -> Path   the directory, tidied: call once, before training
    checkpoint_dir_for(root, cfg, *inputs)      keyed by everything that shapes training
    drop_incomplete_checkpoints(dir)            a checkpoint killed mid-write is removed
    drop_finished_run(dir, cfg)                 a run that reached its final step starts over
    last_checkpoint(dir), step_of(checkpoint)   where Trainer resumes, and its global step
    final_step(cfg)                             the step a finished run ends at

A rerun after a kill finds its own checkpoints and resumes bit-identically; a run with other params
or data starts fresh instead of resuming someone else's optimizer state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from tinyreason import paths
from tinyreason.config import RunConfig, config_to_dict

log = logging.getLogger(__name__)


def checkpoint_dir_for(root: Path, cfg: RunConfig, *inputs: Path) -> Path:
    """A checkpoint directory keyed by everything that shapes training (config + input bytes)."""
    digest = hashlib.sha256()
    resolved = config_to_dict(cfg)
    # Where the curves are reported does not shape training: adding a tracker still resumes, and
    # existing checkpoint directories keep their names.
    del resolved["train"]["report_to"]
    for section in ("seed", "model", "prompts", "prepare", "train"):
        digest.update(json.dumps(resolved[section], sort_keys=True).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    return Path(root) / digest.hexdigest()[:16]


def step_of(checkpoint: str | None) -> int | None:
    """The global step of a `checkpoint-<step>` directory (None for None)."""
    return int(str(checkpoint).rsplit("-", 1)[-1]) if checkpoint else None


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint in output_dir (Trainer writes trainer_state.json last)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    if found and not (Path(found) / "trainer_state.json").is_file():
        return None
    return found


def final_step(cfg: RunConfig) -> int:
    """The global step a finished run of `cfg` ends at (GRPO's half-cosine trick stops early)."""
    stop = cfg.train.grpo.stop_at_step
    return stop if cfg.train.method == "grpo" and stop is not None else cfg.train.max_steps


def drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """A checkpoint killed while being written has no (or a truncated) trainer_state.json, which
    Trainer writes last: remove it, so the run resumes from the newest complete checkpoint. A
    truncated JSON file of the run itself (SFT's speed_plan.json) is removed too: it is recomputed."""
    if not checkpoints.is_dir():
        return
    for own in checkpoints.glob("*.json"):
        try:
            json.loads(own.read_text())
        except ValueError:
            own.unlink()
    for ckpt in checkpoints.glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (killed while it was written)", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)


def drop_finished_run(checkpoints: Path, cfg: RunConfig) -> None:
    """Remove the checkpoints of a run that already reached its final step, so a rerun starts over.

    Trainer saves a checkpoint at the final step, and resuming from it is not a no-op: Trainer
    skips the batches already seen, then runs one more step before it checks max_steps, so each
    rerun of a finished stage (`dvc repro -f train`, or after its outputs were deleted) trained
    5, 6, 7... steps for max_steps 4. Starting over gives the first run's outputs again
    (bit-identical on CPU: tests/test_reliability.py). Call after `drop_incomplete_checkpoints`.
    """
    last = last_checkpoint(checkpoints)
    if last is None:
        return
    step = json.loads((Path(last) / "trainer_state.json").read_text()).get("global_step", 0)
    if step >= final_step(cfg):
        log.info("%s finished at step %d: training again from the start (resuming a finished run "
                 "would add a step)", checkpoints, step)
        shutil.rmtree(checkpoints)


def run_directory(cfg: RunConfig, inputs: list[Path], state=None, root: Path = paths.CHECKPOINTS) -> Path:
    """The train stage's run directory for `cfg` and its input files, ready to train in: the main
    process drops incomplete checkpoints and a finished run while the others wait (`state`: accelerate's
    PartialState of several processes, None for one)."""
    from tinyreason import distributed

    run_dir = checkpoint_dir_for(root, cfg, *inputs)
    with distributed.main_process_first(state):
        if distributed.is_main_process():
            drop_incomplete_checkpoints(run_dir)
            drop_finished_run(run_dir, cfg)
    return run_dir
