"""SwanLab, offline unless told otherwise: `SWANLAB_MODE` (default "offline") writes the run under
`<run>/swanlab/run-…-<id>/` (a `.swanlab` record log, the config in `files/config.yaml`), uploaded later with
`swanlab sync`. "offline" because it writes files with no server, login or extra package; SwanLab's "local" mode
needs its separate dashboard package, and "online" an API key. `SWANLAB_PROJECT` names the project (default
"tunelab").

Steps are given with every record (`log(..., step=)`): SwanLab keeps a step line per metric, so a checkpoint's
evaluation logged after training, at an earlier step than the last loss, lands where it belongs (a metric's own
steps must still grow: a repeated or earlier step of the same metric is dropped).

The run id is saved in trackers.json and a resumed run opens it again (`resume="allow"`). SwanLab 0.10
continues a run on its server only (online mode); offline, the resumed attempt is a second `run-…-<id>`
directory whose start record carries the same id and resume "allow", for `swanlab sync` to attach to that run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any


class SwanLabTracker:
    """One SwanLab run."""

    name = "swanlab"

    def __init__(self, run_dir: Path, run_name: str, saved: dict[str, Any] | None, resume_step: int | None):
        import swanlab

        settings = swanlab.Settings(interactive=False,  # never wait at a login prompt in a training job
                                    terminal=swanlab.Settings.Terminal(proxy_type="none"))  # tunelab logs itself
        # reinit: a run left open in this process (a previous attempt that did not close) is finished, not an error
        with notes_to_stderr():
            self.run = swanlab.init(mode=os.environ.get("SWANLAB_MODE", "offline"),
                                    log_dir=str(Path(run_dir) / "swanlab"),
                                    project=os.environ.get("SWANLAB_PROJECT", "tunelab"), name=run_name,
                                    id=(saved or {}).get("run_id"), resume="allow", settings=settings, reinit=True)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

    def close(self) -> None:
        with notes_to_stderr():
            self.run.finish()


def notes_to_stderr() -> contextlib.AbstractContextManager:
    """SwanLab prints where the run is saved and how to sync it, on stdout, with no setting to quiet it; tunelab's
    stdout holds only a command's result, so those lines go to stderr with tunelab's own notes."""
    return contextlib.redirect_stdout(sys.stderr)
