"""Weights & Biases, offline unless told otherwise: `WANDB_MODE` (default "offline") writes the run under
`<run>/wandb/offline-run-…/`, uploaded later with `wandb sync`; `WANDB_MODE=online` logs live (after
`wandb login`). `WANDB_PROJECT` names the project (default "tunelab").

W&B's own step must only grow, but tunelab logs checkpoint evaluations after training, at earlier steps. So
W&B's step is never set: every record carries the training step as the value `train/step`, and every metric
is defined against it (`define_metric(step_metric=...)`), which is what the charts use as their x axis.

The run id is saved in trackers.json and a resumed run opens it again (`resume="allow"`). Online that is the same
run on the server; offline it is a second `offline-run-…-<id>` directory carrying the same id, for `wandb sync` to
upload into that run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STEP = "train/step"


class WandbTracker:
    """One W&B run."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, saved: dict[str, Any] | None, resume_step: int | None):
        import wandb

        self.run = wandb.init(
            mode=os.environ.get("WANDB_MODE", "offline"), dir=str(run_dir),
            project=os.environ.get("WANDB_PROJECT", "tunelab"), name=run_name,
            id=(saved or {}).get("run_id"), resume="allow",
            # tunelab writes its own logs: W&B neither prints nor captures the console
            settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, STEP: step})

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

    def close(self) -> None:
        self.run.finish()
