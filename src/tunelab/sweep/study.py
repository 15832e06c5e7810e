"""A sweep's Optuna study: where it is stored, how it samples and prunes, and how trials that died are taken up.

The study lives in an RDB storage — SQLite beside the trials by default (`<sweep>/study.db`), or any URL
Optuna takes (PostgreSQL, MySQL) so that workers on several machines share it. Everything a later invocation
needs is in the study: the recipe as written, the space and the objective (its user attributes; a sweep
extended or resumed with other ones is refused, since their trials would not be comparable), and each trial's
run directory (the trial's `run` attribute).

A trial that stopped before its end is put back in the queue as itself (`requeue`: RUNNING -> WAITING, its
number, parameters, reported values and `run` attribute kept), so the next free worker resumes its run from the
last checkpoint under the same number, and the trials' folders keep following the trial numbers: when it was
preempted (`tunelab.sweep.trial`), and when its process died (SIGKILL, a crash) on this machine, seen at the next
`tunelab sweep` by its run directory's lock (`tunelab.train.run_lock`) having no holder — the kernel releases it
when the process dies. A trial whose machine was lost is taken up anywhere by Optuna's heartbeat once it has been
silent for `GRACE_S`, by Optuna's retry (`RetryHeartbeatStaleTrialCallback`): a WAITING copy under a new number
that keeps the `run` attribute, so it also resumes the run; the table shows the two as one trial. Each stop is
recorded (`STOPS_ATTR`) so the table says how a trial was interrupted.
"""

from __future__ import annotations

import json
import logging
import socket
import warnings
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

HEARTBEAT_S, GRACE_S = 60, 600  # a trial silent for 10 minutes is dead wherever it ran
ERROR_ATTR = "error"  # a trial that failed on its own (diverged, bad data): counted, not retried
RUN_ATTR, HOST_ATTR = "run", "host"
STOPS_ATTR = "stops"  # how each earlier process working on the trial stopped: "preempted: …", "its process died"
DIED = "its process died"


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').absolute()}"


def open_storage(url: str):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tunelab logs what each trial did
    # the heartbeat, its retry and the matplotlib plots are "experimental" in Optuna 5: chosen, not news to a user
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except ImportError as e:  # a database driver (psycopg2, PyMySQL) that is not installed
        raise TunelabError(f"the study storage needs a database driver that is not installed ({e})",
                           field="storage") from e
    except Exception as e:  # SQLAlchemy's OperationalError and friends: an unreachable server, a bad URL
        raise TunelabError(f"cannot open the study storage: {type(e).__name__}: {str(e).splitlines()[0]}",
                           field="storage") from e
    if url.startswith("sqlite"):
        _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine) -> None:
    """Every transaction on the SQLite study takes the write lock at BEGIN (`BEGIN IMMEDIATE`). pysqlite runs a
    SELECT outside any transaction, so two workers both read a WAITING trial (the recipe's own values, a
    retry) as free, both set it RUNNING, and both ran it: Optuna's `SELECT … FOR UPDATE` means nothing to
    SQLite. PostgreSQL and MySQL lock the row and need none of this. (SQLAlchemy's recipe for pysqlite.)"""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks were attached are not reused


def sampler(seed: int, trials: int, offset: int, space):
    """TPE, which takes the retention constraint each trial sets (`tunelab.sweep.trial`) into account. Its seed
    moves with `offset` (trials already in the study, the worker's index): a resumed sweep or a second worker must
    not draw the same random start again.

    A space of choices only (`Space.grid_size`) is a grid instead: Optuna's GridSampler runs each combination
    once, across resumes and workers. A comparison of six adapter kinds wants each of them measured, and TPE,
    drawing among six, would run one twice and leave another out. Its seed stays the recipe's: the sampler
    shuffles the grid by it and records each trial's place in that order, so every invocation and worker must
    shuffle alike or a resumed grid runs one combination twice."""
    import optuna
    if space.grid_size() is not None:
        from tunelab.sweep.space import encode_choice
        grid = {d.field: [encode_choice(c) for c in d.choices] for d in space.dimensions}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed + 1009 * offset, n_startup_trials=max(2, min(10, trials // 3)))


def pruner(enabled: bool):
    """Median pruning on the checkpoint index (1..num_checkpoints, the same points of every trial's training),
    from the second checkpoint on and once two trials have finished; none with --no-prune."""
    import optuna
    if not enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)  # steps are 1, 2, ..: from 2


def identity(raw_recipe: dict, space_raw: dict, objective: str, direction: str) -> dict[str, str]:
    """What makes two invocations one sweep, as the study's user attributes (JSON text: comparable as is)."""
    recipe = {k: v for k, v in raw_recipe.items() if k not in ("output_dir", "report_to")}
    return {"recipe": json.dumps(recipe, sort_keys=True, ensure_ascii=False, default=str),
            "space": json.dumps(space_raw, sort_keys=True, ensure_ascii=False, default=str),
            "objective": objective, "direction": direction}


def open_study(storage, name: str, ident: dict[str, str], create: bool):
    """The sweep's study: created (with `ident`) when `create` and it is not there, else loaded and checked."""
    import optuna
    direction = ident["direction"]
    if create:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
    else:
        try:
            study = optuna.load_study(storage=storage, study_name=name)
        except KeyError as err:
            raise TunelabError(f"no study named {name} in the storage", field="storage") from err
    attrs = study.user_attrs
    if not attrs:
        for key, value in ident.items():
            study.set_user_attr(key, value)
        return study
    for key in ("recipe", "space", "objective", "direction"):
        if attrs.get(key) != ident[key]:
            raise TunelabError(f"this sweep's study was started with another {key}; its trials would not compare "
                               "with the new ones: resume or extend it with the same recipe, space and objective, "
                               "or give the sweep another directory (or study name) to start a new one", field="out")
    return study


def counted(study) -> int:
    """Trials that count towards --trials: complete, pruned, or failed on their own. A trial that died (and is
    retried) or is still running does not."""
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs))


def in_flight(study) -> int:
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in (TrialState.RUNNING, TrialState.WAITING))


def take_up_dead_trials(study, storage, sweep_dir: Path) -> list[int]:
    """Requeue this machine's RUNNING trials whose run nobody writes any more (module docstring); returns their
    numbers. A trial another process took up first is left to it."""
    from optuna.trial import TrialState

    from tunelab.train.run_lock import run_lock
    host = socket.gethostname()
    taken = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = t.user_attrs.get(RUN_ATTR)
        if run is None or t.user_attrs.get(HOST_ATTR) != host:
            continue  # starting (no run yet), or another machine's
        try:
            with run_lock(sweep_dir / run):  # held while requeued: a worker that took it up meanwhile has it
                if not requeue(study, storage, t.number, DIED):
                    continue
        except TunelabError:
            continue  # alive: its process holds the lock
        taken.append(t.number)
        log.info("trial %d (%s) died while running: it resumes its run", t.number, run)
    return taken


def requeue(study, storage, number: int, why: str) -> bool:
    """Put a RUNNING trial back in the queue as itself, noting `why` it stopped among its stops; False when it is
    no longer running (another process finished or requeued it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               number)
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return False
    storage.set_trial_user_attr(trial_id, STOPS_ATTR, [*trial.user_attrs.get(STOPS_ATTR, []), why])
    try:
        return storage.set_trial_state_values(trial_id, TrialState.WAITING)
    except UpdateFinishedTrialError:
        return False
