"""A run directory's layout: its checkpoints, and which one is best.

    <run>/checkpoints/step-000120/   one checkpoint (what it holds: `tunelab.train.checkpoints`)
        model/ or adapter/           the directory to load (`model_dir_of`)
        state.json                   written last: a checkpoint without it is unfinished
    <run>/train_summary.json         the trainer's; `best_checkpoint`: the lowest validation loss
    <run>/metrics.json               `tunelab run`'s; `best_checkpoint`: the best on the evaluated tasks

Train, eval, serve and export all choose checkpoints here, so "the best checkpoint" means one thing
everywhere. It sits at the bottom of the import graph (it needs nothing of tunelab but the error type), so
every stage may use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from tunelab.data.records import read_json_object
from tunelab.errors import TunelabError

STEP_PREFIX = "step-"


class Ranked(Protocol):
    """What `best_label` needs of a task: its primary metric and which way is better."""

    primary_metric: str
    higher_is_better: bool


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{STEP_PREFIX}{step:06d}"


def is_run_dir(path: str | Path) -> bool:
    """A training run's directory (it has checkpoints/), as `model.path` may name one: its best checkpoint."""
    return (Path(path) / "checkpoints").is_dir()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints (those with state.json), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    # a name with a suffix (step-000040.tmp) is a checkpoint still being written, or one a kill interrupted
    return sorted(p for p in root.iterdir()
                  if re.fullmatch(rf"{STEP_PREFIX}\d+", p.name) and (p / "state.json").exists())


def model_dir_of(ckpt: Path) -> Path:
    """The directory to load for inference: merged/full model if present, else the adapter."""
    return ckpt / "model" if (ckpt / "model").is_dir() else ckpt / "adapter"


def best_checkpoint(run_dir: str | Path) -> tuple[str | None, float | None]:
    """(name, val_loss) of the checkpoint with the lowest validation loss (the earliest on a tie);
    (None, None) when no checkpoint has one (runs without a validation split)."""
    best = (None, None)
    for ckpt in list_checkpoints(run_dir):
        val = read_json_object(ckpt / "state.json").get("val_loss")
        if isinstance(val, (int, float)) and (best[1] is None or val < best[1]):
            best = (ckpt.name, val)
    return best


def best_label(table: dict[str, dict], label: str, task: Ranked) -> str:
    """The model/checkpoint whose `label` result is best on the task's primary metric (the first on a tie)."""
    key = lambda k: table[k][label][task.primary_metric]  # noqa: E731
    return max(table, key=key) if task.higher_is_better else min(table, key=key)


def pick_checkpoint(run_or_ckpt: Path, which: str = "best") -> Path:
    """A checkpoint's loadable model dir: `best` from metrics.json when known (best by the evaluated tasks),
    else from train_summary.json (a pretraining run's lowest validation loss), else the last one.
    A checkpoint gives its model dir, a model or adapter directory itself."""
    if (run_or_ckpt / "config.json").exists() or (run_or_ckpt / "adapter_config.json").exists():
        return run_or_ckpt
    if (run_or_ckpt / "state.json").exists():
        return model_dir_of(run_or_ckpt)
    ckpts = list_checkpoints(run_or_ckpt)
    if not ckpts:
        raise TunelabError("no checkpoints here (expected a run directory, a checkpoint or a model directory)",
                           file=run_or_ckpt)
    for marked in ("metrics.json", "train_summary.json"):
        if which == "best" and (run_or_ckpt / marked).exists():
            best = read_json_object(run_or_ckpt / marked).get("best_checkpoint")
            for c in ckpts:
                if c.name == best:
                    return model_dir_of(c)
    return model_dir_of(ckpts[-1])
