"""`tunelab sweep RECIPE --space SPACE.yaml --trials N`: a hyperparameter search for the competition score under
the retention constraint, on Optuna.

Each trial is a whole `tunelab run` of the recipe with the trial's values (`.trial`), into `<sweep>/trial-NNN/`;
TPE proposes the values, the retention verdict is its constraint, a trial behind the others at the same
checkpoint is pruned (`.objective`, `.study`). The study is an Optuna RDB storage (`<sweep>/study.db`, or a
PostgreSQL/MySQL URL shared by several machines), so:
- a sweep stopped in any way resumes where it was when run again with the same arguments: finished trials are
  kept, a trial that was cut off resumes its own run from its last checkpoint;
- `--trials` is the study's total: a larger number extends a finished sweep;
- several workers share one study: one per GPU of this machine (`devices`), K on the recipe's device
  (`workers`), or one `tunelab sweep` per machine against one database URL.
The first trial of a new sweep is the recipe's own values (when the space holds them), so the table says what
the search gained over the recipe as written. A space of choices only is a grid: every combination runs once (the
recipe's own among them) and `--trials` above the grid's size stops at it. At the end: the table, best.yaml and
the plots (`.results`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.sweep.results import SweepResults, write_results

log = logging.getLogger(__name__)


@dataclass
class SweepSettings:
    """One `tunelab sweep` invocation. `out`: the sweep directory (default `<output_dir>/<name>-sweep`);
    `storage`: an Optuna RDB URL (default SQLite in `out`); `study`: the study's name (default the recipe's);
    `devices`: GPU indices, one worker each; `workers`: worker processes on the recipe's device;
    `worker_index`: set in a worker process only."""

    recipe: str
    space: str
    trials: int
    overrides: list[str] = field(default_factory=list)
    objective: str = "score"
    direction: str | None = None
    out: str | None = None
    storage: str | None = None
    study: str | None = None
    prune: bool = True
    baseline: bool = True
    devices: list[str] = field(default_factory=list)
    workers: int = 1
    worker_index: int | None = None


@dataclass
class Prepared:
    """A sweep's pieces, read and checked once: the trials' setup, the sweep's storage and study."""

    setup: object
    storage: object
    study: object
    sweep_dir: Path


def prepare(settings: SweepSettings) -> Prepared:
    """Read and check the recipe, the space and the objective; open (or create) the study."""
    try:
        import optuna  # noqa: F401
    except ImportError as err:
        raise TunelabError("a sweep needs Optuna, which is not installed: pip install 'tunelab[sweep]'") from err
    from tunelab.recipe import read_recipe_raw, recipe_from_raw
    from tunelab.sweep import study as studies
    from tunelab.sweep.objective import objective_for
    from tunelab.sweep.space import load_space
    from tunelab.sweep.trial import TrialSetup
    recipe_file = Path(settings.recipe)
    raw, text = read_recipe_raw(recipe_file, settings.overrides)
    base = recipe_from_raw(raw, recipe_file, text)  # the data files are checked here, once
    space = load_space(settings.space, raw, recipe_file)
    objective = objective_for(settings.objective, base, settings.direction)
    sweep_dir = Path(settings.out) if settings.out else Path(base.output_dir) / f"{base.name}-sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(settings.storage or studies.default_storage(sweep_dir))
    ident = studies.identity(raw, space.raw, objective.name, objective.direction)
    study = studies.open_study(storage, settings.study or base.name, ident, create=settings.worker_index is None)
    setup = TrialSetup(raw, recipe_file, space, objective, sweep_dir, settings.prune)
    return Prepared(setup, storage, study, sweep_dir)


def sweep(settings: SweepSettings) -> SweepResults:
    """Run the sweep to `settings.trials` counted trials (module docstring) and write its results."""
    if settings.trials < 1:
        raise TunelabError(f"the number of trials is at least 1, got {settings.trials}", field="trials")
    p = prepare(settings)
    from tunelab.sweep import study as studies
    studies.take_up_dead_trials(p.study, p.storage, p.sweep_dir)
    grid = p.setup.space.grid_size()
    if grid is not None and settings.trials > grid:
        log.info("the space is a grid of %d combinations: the sweep runs each once, not %d trials", grid,
                 settings.trials)
        settings = replace(settings, trials=grid)
    if settings.baseline and grid is None and not p.study.get_trials(deepcopy=False):
        _enqueue_baseline(p)  # a grid runs the recipe's own values as one of its points
    done = studies.counted(p.study)
    if done >= settings.trials:
        log.info("the sweep has %d finished trials already, of the %d asked for: nothing to run%s", done,
                 settings.trials, "" if grid is not None else "; asking for more extends it")
    elif settings.devices or settings.workers > 1:
        _run_workers(settings, p)
    else:
        work(settings, p, worker_index=0)
    return write_results(p.study, p.setup.space, p.setup.raw_recipe, p.setup.recipe_file, p.sweep_dir)


def _enqueue_baseline(p: Prepared) -> None:
    params = p.setup.space.params_of(p.setup.raw_recipe)
    if params is None:
        log.info("the recipe's own values are not all in the space: no baseline trial (the table compares trials "
                 "with each other only)")
        return
    p.study.enqueue_trial(params, user_attrs={"baseline": True})


def work(settings: SweepSettings, p: Prepared, worker_index: int) -> None:
    """Run trials until the study has `settings.trials` counted ones (with those under way elsewhere)."""
    import optuna

    from tunelab.sweep import study as studies
    from tunelab.sweep.trial import TrialFailed, TrialStopped, run_trial
    offset = len(p.study.get_trials(deepcopy=False)) + 7919 * worker_index
    seed = p.setup.raw_recipe.get("seed", 0) if isinstance(p.setup.raw_recipe.get("seed", 0), int) else 0
    study = optuna.load_study(storage=p.storage, study_name=p.study.study_name,
                              sampler=studies.sampler(seed, settings.trials, offset, p.setup.space),
                              pruner=studies.pruner(settings.prune))

    def enough(study, _trial=None) -> bool:
        running = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING)
        return studies.counted(study) + running >= settings.trials

    def stop_when_enough(study, trial) -> None:
        if enough(study):
            study.stop()

    if enough(study):
        return
    logging.getLogger("optuna.study._optimize").addFilter(_OPTUNA_FAILURE_NOTES)
    try:
        study.optimize(lambda trial: run_trial(trial, p.setup), callbacks=[stop_when_enough], catch=(TrialFailed,),
                       gc_after_trial=True)
    except TrialStopped as stop:  # its run's lock is free now: a worker that takes the trial up can resume it
        studies.requeue(study, p.storage, stop.number, stop.why)
        raise stop.cause from stop  # the CLI's one line, with the command that resumes the sweep


class _LoggedByTunelab(logging.Filter):
    """Leaves out Optuna's two warnings on a trial that failed on its own ("Trial N failed … because of the
    following error" with a traceback, then "Trial N failed with value None"): the trial has said why in one
    line already (`TrialFailed`)."""

    def __init__(self):
        super().__init__()
        self.followed: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        from tunelab.sweep.trial import TrialFailed
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            self.followed.add(f"Trial {record.exc_info[1].number} failed with value ")
            return False
        said = next((p for p in self.followed if record.getMessage().startswith(p)), None)
        self.followed.discard(said)
        return said is None


_OPTUNA_FAILURE_NOTES = _LoggedByTunelab()


def _run_workers(settings: SweepSettings, p: Prepared) -> None:
    """Worker processes sharing the study: one per device (CUDA_VISIBLE_DEVICES), or `workers` on the recipe's
    device with the CPU cores split between them; each logs to `<sweep>/worker-<i>.log`. Waits for all, saying
    which trials finish meanwhile."""
    from tunelab.sweep import study as studies
    count = len(settings.devices) or settings.workers
    count = min(count, settings.trials - studies.counted(p.study))
    threads = max(1, (os.cpu_count() or 1) // count)
    procs = []
    for i in range(count):
        env = dict(os.environ)
        if settings.devices:
            env["CUDA_VISIBLE_DEVICES"] = settings.devices[i]
        else:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        spec = {**asdict(settings), "worker_index": i, "out": str(p.sweep_dir),
                "storage": settings.storage or studies.default_storage(p.sweep_dir), "study": p.study.study_name}
        logfile = open(p.sweep_dir / f"worker-{i}.log", "a", encoding="utf-8")
        procs.append((subprocess.Popen([sys.executable, "-m", "tunelab.sweep.worker", json.dumps(spec)], env=env,
                                       stdout=logfile, stderr=subprocess.STDOUT), logfile))
        log.info("worker %d started (PID %d%s), logging to %s", i, procs[-1][0].pid,
                 f", GPU {settings.devices[i]}" if settings.devices else "", p.sweep_dir / f"worker-{i}.log")
    seen: set[int] = set()
    try:
        while any(proc.poll() is None for proc, _ in procs):
            _log_finished(p.study, seen)
            time.sleep(5)
    finally:
        for proc, logfile in procs:
            if proc.poll() is None:
                proc.terminate()  # tunelab's runs stop after a checkpoint on SIGTERM and resume next time
            proc.wait()
            logfile.close()
    _log_finished(p.study, seen)
    failed = [(i, proc.returncode) for i, (proc, _) in enumerate(procs) if proc.returncode]
    if failed:
        raise TunelabError("worker " + ", ".join(f"{i} exited with status {rc}" for i, rc in failed)
                           + f"; see {p.sweep_dir}/worker-<i>.log", file=p.sweep_dir)


def _log_finished(study, seen: set[int]) -> None:
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and t.number not in seen:
            seen.add(t.number)
            log.info("trial %d %s%s", t.number, t.state.name.lower(),
                     f": {t.value:.6g}" if t.value is not None else "")
