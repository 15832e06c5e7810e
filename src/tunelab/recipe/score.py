"""The recipe's `score:` section: which competition formula scores the run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.recipe.fields import StrictSection, Text


class ScoreConfig(StrictSection):
    formula: Literal["stage1", "stage2"] = "stage1"
    total_params: float | None = None
    accuracy_task: Text = "arithmetic"
    handin: Literal["mindspore", "hf", "both"] | None = Field(default=None, description=(
        "write the competition's hand-in (`tunelab handin`) into the run's handin/ once it is evaluated: its "
        "checkpoints merged in this format (train.num_checkpoints: 5), logs, predictions, report, environment"))
