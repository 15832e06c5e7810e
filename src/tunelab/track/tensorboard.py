"""TensorBoard: event files under `<run>/tensorboard/`, written with torch's `SummaryWriter` (torch is already
tunelab's dependency; the `tensorboard` package is what it needs to write, and what reads them back).

The log directory is the run's identity, so there is nothing to save in trackers.json. A resumed run re-trains
the steps after its checkpoint: the writer opens with `purge_step = resume_step + 1`, and TensorBoard drops what
the interrupted attempt logged from that step on, instead of drawing two lines over the same steps.

Hyperparameters go to the HParams tab as the run's own session (not `add_hparams`, which writes a second,
time-stamped run beside it with copies of the metrics): its table lists every run of a directory with its recipe
values next to its last metrics, so runs compare by recipe; a markdown table in the Text tab would show one
run at a time. Only the session start is written, without an experiment summary: TensorBoard then gathers the
columns from every run's session and the metric columns from their scalars, so runs with different recipe
keys still share one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLUSH_SECS = 30  # how stale a live dashboard may be; the writer flushes on close anyway


class TensorBoardTracker:
    """The run's TensorBoard event files."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, saved: dict[str, Any] | None, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tensorboard"
        purge_step = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=FLUSH_SECS)

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        _, session_start, _ = hparams(hparam_values(params), {})
        self.writer.file_writer.add_summary(session_start)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def state(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.writer.close()


def hparam_values(params: dict[str, Any]) -> dict[str, Any]:
    """Numbers as numbers, everything else as its text. Booleans too: torch's `hparams` tests for int before bool
    and would show True as 1.0."""
    return {key: value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else str(value)
            for key, value in params.items()}
