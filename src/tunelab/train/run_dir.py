"""The run directory a training run writes into: created for a new run, refused when it would overwrite one,
checked against the recipe a resumed run started with. Only the recipe's identity must match: settings that
may change between a stop and a resume (CPU threads, the divergence guard, the memory check) are left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, recipe_to_yaml
from tunelab.train.distributed import Dist, all_sum, barrier


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
    if dist.world > 1:
        check_shared(saved, current, dist)
    return run_dir


# NFS may show a file another client made only once its directory's attribute cache expires (acdirmin, 30 s)
SHARED_WAIT_SECONDS = 60.0


def check_shared(saved: Path, current: str, dist: Dist) -> None:
    """Every rank must see the recipe.yaml rank 0 has just written: rank 0 alone writes the run (checkpoints,
    a from-scratch tokenizer, metrics) and every rank reads it back (the tokenizer, a resume point), so the run
    directory must be on a filesystem every node shares. A node that has its own disk there is stopped here, with
    that said, on every rank (a collective), instead of training on what it cannot read."""
    import socket
    import time

    def sees() -> bool:
        try:
            return saved.read_text(encoding="utf-8") == current
        except OSError:
            return False
    deadline = time.monotonic() + SHARED_WAIT_SECONDS
    while not dist.main and not sees() and time.monotonic() < deadline:
        time.sleep(0.5)
    blind = dist.rank != 0 and not sees()
    if all_sum(dist, [1.0 if blind else 0.0])[0]:
        who = f"this process (rank {dist.rank} on {socket.gethostname()}) does not" if blind else \
            "other processes do not"
        raise TunelabError(f"{who} see the recipe.yaml rank 0 wrote into the run directory: under torchrun on "
                           "several machines, output_dir must be on a filesystem every node shares (NFS, Lustre, "
                           "...) at the same path", file=saved, field="output_dir")


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
