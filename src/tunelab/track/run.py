"""A run's trackers, opened from its recipe: the names it reports to, the hyperparameters every dashboard shows
(the resolved recipe, flattened, and the environment it ran in), and where the run's directory is. Training
and the pipeline's evaluation each open them once, rank 0 only; the trackers continue the same tracked run."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from tunelab.recipe import Recipe
from tunelab.track.base import Trackers, open_trackers
from tunelab.track.names import flat_params


def environment() -> dict[str, Any]:
    """What the run ran with, beside the recipe: versions and the machine."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers
    try:
        tunelab_version = version("tunelab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        tunelab_version = "source"
    env = {"tunelab": tunelab_version, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "host": platform.node()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpus"] = torch.cuda.device_count()
    return env


def open_run_trackers(recipe: Recipe, run_dir: str | Path, resume_step: int | None = None) -> Trackers:
    """The trackers `recipe.report_to` names, for the run at `run_dir` (module docstring)."""
    params = {**flat_params(recipe.model_dump(mode="json", exclude={"report_to"})),
              **flat_params(environment(), "env.")}
    return open_trackers(list(recipe.report_to), run_dir, recipe.name, params, resume_step)
