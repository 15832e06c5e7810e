"""The recipe's `score:` section: which competition formula scores the run."""

from __future__ import annotations

from typing import Literal

from tunelab.recipe.fields import StrictSection, Text


class ScoreConfig(StrictSection):
    formula: Literal["stage1", "stage2"] = "stage1"
    total_params: float | None = None
    accuracy_task: Text = "arithmetic"
