"""The tracker interface, and the fan-out that keeps a failing tracker from costing the run.

Each tracker is a small class over its own library (`tensorboard.py`, `mlflow.py`, `wandb.py`, `swanlab.py`),
opened with the run directory, the run's name and what it saved the last time (its run id), so that a resumed
run continues the same tracked run. `Trackers` calls each one inside a guard: the first failure is logged as
one warning naming the tracker and the error, the tracker is switched off, and training goes on.

What was logged once per checkpoint (evaluations are cached across `--resume`, so the pipeline offers them
again) is remembered in `<run>/trackers.json` beside the ids, and not sent twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Protocol

from tunelab.errors import TunelabError
from tunelab.records import write_json
from tunelab.track.names import is_number

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"

# name -> (module, class, the import that proves its library is here, the extra that installs it)
KNOWN = {
    "tensorboard": ("tunelab.track.tensorboard", "TensorBoardTracker", "tensorboard", "tensorboard"),
    "mlflow": ("tunelab.track.mlflow", "MLflowTracker", "mlflow", "mlflow"),
    "wandb": ("tunelab.track.wandb", "WandbTracker", "wandb", "wandb"),
    "swanlab": ("tunelab.track.swanlab", "SwanLabTracker", "swanlab", "swanlab"),
}


class Tracker(Protocol):
    """One dashboard. `state()` is what it needs to find its run again (saved in trackers.json)."""

    name: str

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def check_trackers(names: list[str], field: str = "report_to") -> None:
    """Every named tracker is known and its library importable, before anything runs: one error naming the
    extra to install otherwise."""
    for name in names:
        if name not in KNOWN:
            raise TunelabError(f"unknown tracker '{name}' (known: {', '.join(KNOWN)})", field=field)
        library, extra = KNOWN[name][2], KNOWN[name][3]
        if importlib.util.find_spec(library) is None:
            raise TunelabError(f"the {name} tracker needs the `{library}` package: pip install 'tunelab[{extra}]'",
                               field=field)


class Trackers:
    """Every tracker a run reports to, each call guarded (module docstring)."""

    def __init__(self, trackers: list[Tracker], run_dir: Path, saved: dict[str, Any]):
        self.trackers, self.run_dir = list(trackers), Path(run_dir)
        self.logged: set[str] = set(saved.get("logged", []))

    def _each(self, what: str, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # a dashboard never stops a run: one warning, then it is off
                log.warning("tracker %s failed to %s (%s: %s); it is off for the rest of this run",
                            tracker.name, what, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                self.trackers.remove(tracker)

    def log_params(self, params: dict[str, Any]) -> None:
        self._each("log the hyperparameters", lambda t: t.log_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if is_number(v)}
        if numbers:
            self._each("log metrics", lambda t: t.log_metrics(numbers, step))

    def log_once(self, key: str, metrics: dict[str, float], step: int) -> None:
        """Log `metrics` unless `key` was logged before in this run (across resumes)."""
        if key in self.logged:
            return
        self.log_metrics(metrics, step)
        self.logged.add(key)
        self._save()

    def _save(self) -> None:
        state = {t.name: t.state() for t in self.trackers}
        write_json(self.run_dir / STATE_FILE, {**_read_state(self.run_dir), **state, "logged": sorted(self.logged)})

    def close(self) -> None:
        self._save()
        self._each("finish", lambda t: t.close())
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged record only costs the continuation: a new tracked run starts


def open_trackers(names: list[str], run_dir: str | Path, run_name: str, params: dict[str, Any] | None = None,
                  resume_step: int | None = None) -> Trackers:
    """The run's trackers, each continuing its saved run when there is one. `resume_step`: the step training
    resumes after, so a tracker that keeps a timeline (TensorBoard) drops what was logged past it; None when
    nothing is re-logged (a fresh run, or the pipeline after training)."""
    check_trackers(names)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # W&B looks for the git root from it before it writes anything
    saved = _read_state(run_dir)
    trackers = []
    for name in names:
        module, cls = KNOWN[name][:2]
        tracker_class = getattr(importlib.import_module(module), cls)
        try:
            trackers.append(tracker_class(run_dir, run_name, saved.get(name), resume_step))
        except Exception as e:
            log.warning("tracker %s could not start (%s: %s); the run goes on without it", name,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    opened = Trackers(trackers, run_dir, saved)
    # per tracker: one added on resume, or one that could not start the first time, still gets them
    done = set(saved.get("params_logged", []))
    if params is not None and any(t.name not in done for t in opened.trackers):
        opened._each("log the hyperparameters", lambda t: None if t.name in done else t.log_params(params))
        done |= {t.name for t in opened.trackers}
        write_json(run_dir / STATE_FILE, {**_read_state(run_dir), "params_logged": sorted(done)})
    opened._save()
    return opened
