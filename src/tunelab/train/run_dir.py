"""The run directory a training run writes into: created for a new run, refused when it would overwrite one,
checked against the recipe a resumed run started with. Only the recipe's identity must match: settings that
may change between a stop and a resume (CPU threads, the divergence guard, the memory check) are left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, recipe_to_yaml
from tunelab.train.distributed import Dist, barrier


def prepare_run_dir(recipe: Recipe, resume: bool, dist: Dist) -> Path:
    """Create the run directory; refuse to overwrite an existing run, and check a resumed recipe matches."""
    run_dir = recipe.run_dir
    saved = run_dir / "recipe.yaml"
    current = recipe_to_yaml(recipe)
    if resume:
        if not saved.exists():
            raise TunelabError("nothing to resume: no run here", file=run_dir)
        if _identity(saved.read_text(encoding="utf-8")) != _identity(current):
            raise TunelabError("the recipe differs from the one this run started with; resume needs the same "
                               "recipe (compare with the saved recipe.yaml)", file=saved)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not _failed_during_setup(run_dir):
            raise TunelabError("run directory already exists: resume it, or give this run another name",
                               file=run_dir, field="name", resumable=True)
        barrier(dist)
        if dist.main:  # start afresh: a from-scratch tokenizer left there was trained on the failed recipe's data
            shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    barrier(dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(current, encoding="utf-8")
    barrier(dist)
    return run_dir


_SETUP_LEFTOVERS = {"recipe.yaml", "tokenizer", "metrics.jsonl"}


def _failed_during_setup(run_dir: Path) -> bool:
    """True when the directory holds only what a run that stopped before logging or checkpointing anything
    leaves behind (e.g. on a LoRA target that matches nothing): nothing worth protecting from a new start."""
    metrics = run_dir / "metrics.jsonl"
    return (all(p.name in _SETUP_LEFTOVERS for p in run_dir.iterdir())
            and not (metrics.exists() and metrics.read_text(encoding="utf-8").strip()))


def _identity(recipe_yaml: str) -> dict:
    """The parts of a saved recipe that define the run, as the current schema reads them (so a key added to
    the schema since the run started, at its default, is no difference); CPU threads, the divergence guard's
    settings, the memory check and the trackers (`report_to`) may change when resuming."""
    import yaml
    from pydantic import ValidationError
    raw = yaml.safe_load(recipe_yaml)
    try:
        raw = Recipe.model_validate(raw).model_dump(mode="json")
    except ValidationError:  # a key the schema no longer has: compared as written, so it differs
        pass
    raw.get("train", {}).pop("threads", None)
    raw.get("train", {}).pop("divergence", None)  # a run the guard stopped by mistake resumes with it changed
    raw.get("train", {}).pop("memory_check", None)
    raw.pop("report_to", None)
    return raw
