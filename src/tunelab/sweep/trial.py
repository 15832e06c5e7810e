"""One trial of a sweep: the recipe with the trial's values, run by `tunelab.pipeline.run` into
`<sweep>/trial-NNN/` like any other run (its lock, its checkpoints, its resume, its report and trackers), judged
at each checkpoint for pruning and at the end by the objective, with the retention verdict as its constraint.

What a trial ends as, in the study:
- COMPLETE, with the objective's value and its outcome as user attributes (score, ratio, retention, constraint);
- PRUNED, behind the other trials at the same checkpoint (its run keeps the checkpoints it wrote);
- FAIL with an `error` attribute, when its run failed on its own (diverged, a recipe the values made invalid):
  counted as a trial, and the sweep goes on;
- back in the queue (WAITING, as itself) when it was stopped (SIGTERM, Ctrl-C): `TrialStopped` carries the stop
  past Optuna, which would log it as a failed trial with a traceback and fail it, to `tunelab.sweep.work`, which
  requeues it once its run's lock is free and ends the sweep; the next sweep resumes its run under its number.
  Killed, it stays RUNNING until `tunelab.sweep.study` takes it up the same way.
"""

from __future__ import annotations

import copy
import logging
import math
import socket
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import Preempted, TunelabError
from tunelab.recipe import Recipe, recipe_from_raw, set_field
from tunelab.sweep.objective import Objective, constraint_of
from tunelab.sweep.space import Space
from tunelab.sweep.study import ERROR_ATTR, HOST_ATTR, RUN_ATTR

log = logging.getLogger(__name__)

RETENTION = "retention"  # the trial's one constraint (Optuna's `set_constraint`): feasible at <= 0


class TrialFailed(Exception):
    """A trial's run failed on its own; the sweep records it and goes on (`study.optimize(catch=…)`)."""

    def __init__(self, why: str, number: int):
        super().__init__(why)
        self.number = number


class TrialStopped(BaseException):
    """A trial's run was stopped (`cause`: `Preempted`, KeyboardInterrupt) and must resume later. A BaseException
    so that Optuna, which catches Exception and KeyboardInterrupt only, lets it through without failing the trial
    or logging it; `why` is what the table says of the stop."""

    def __init__(self, cause: BaseException, number: int, why: str):
        super().__init__(why)
        self.cause, self.number, self.why = cause, number, why


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one sweep shares: the recipe as written (overrides applied) and its file, the space,
    the objective, the directory the trials' runs go to, and whether trials are pruned."""

    raw_recipe: dict
    recipe_file: Path
    space: Space
    objective: Objective
    sweep_dir: Path
    prune: bool = True


def trial_recipe(setup: TrialSetup, values: dict, run_name: str) -> Recipe:
    """The recipe of one trial: the sweep's, with the trial's values, named for the trial, under the sweep. Its
    description (the report's first line) says the trial's values: the recipe's own names its settings, which
    the trial changes (an adapter grid's report said "LoRA rank 4" of every adapter)."""
    from tunelab.sweep.space import encode_choice
    raw = copy.deepcopy(setup.raw_recipe)
    for field, value in values.items():
        set_field(raw, field, value)
    raw["name"] = run_name
    if raw.get("description") and values:
        shown = ", ".join(f"{field}={encode_choice(value)}" for field, value in values.items())
        raw["description"] = f"{str(raw['description']).rstrip()} A sweep's trial: {shown}."
    raw["output_dir"] = str(setup.sweep_dir.absolute())
    return recipe_from_raw(raw, setup.recipe_file, check_data=False)  # the data was checked once, for the sweep


def run_trial(trial, setup: TrialSetup) -> float:
    """Optuna's objective for one trial (module docstring)."""
    import optuna

    from tunelab.pipeline import run
    from tunelab.train.run_lock import run_lock
    run_name = trial.user_attrs.get(RUN_ATTR) or f"trial-{trial.number:03d}"  # a retried trial resumes its run
    values = setup.space.suggest(trial)
    try:
        recipe = trial_recipe(setup, values, run_name)
    except TunelabError as e:
        return _failed(trial, f"invalid recipe: {e}")

    def on_checkpoint(written) -> None:
        if written.index == 1 or not (recipe.run_dir / "eval" / "base" / "results.json").exists():
            reuse_base_evaluation(recipe, setup.sweep_dir)
        if not setup.prune:
            return
        value = setup.objective.at_checkpoint(recipe, written)
        if value is None or not math.isfinite(value):
            return
        trial.report(value, written.index)
        if trial.should_prune():
            trial.set_user_attr("pruned_at", written.path.name)
            raise optuna.TrialPruned(f"{setup.objective.name} {value:.4g} at {written.path.name}: behind the "
                                     "median of the other trials there")

    with run_lock(recipe.run_dir):  # taken before the run is named in the study: a named run's free lock = dead
        trial.set_user_attr(RUN_ATTR, run_name)
        trial.set_user_attr(HOST_ATTR, socket.gethostname())
        resume = (recipe.run_dir / "recipe.yaml").exists()
        log.info("trial %d (%s%s): %s", trial.number, run_name, ", resuming" if resume else "",
                 ", ".join(f"{k}={v}" for k, v in trial.params.items()))
        try:
            metrics = run(recipe, resume=resume, on_checkpoint=on_checkpoint)
            value = setup.objective.final(metrics)
        except Preempted as e:
            raise TrialStopped(e, trial.number, f"preempted: {e.message}") from e
        except KeyboardInterrupt as e:
            raise TrialStopped(e, trial.number, "interrupted (Ctrl-C)") from e
        except TunelabError as e:
            if e.field == "objective":  # the objective names what the runs do not measure: every trial would fail
                raise
            # the loop's non-finite or diverging loss names train.lr, the setting to lower
            return _failed(trial, f"diverged: {e.message}" if e.field == "train.lr" else f"failed: {e}")
    _record(trial, metrics, recipe)
    return value


def _base_identity(recipe: Recipe) -> dict:
    """What the base model's evaluation depends on: the model, the eval section, the prompt template, the seed."""
    return {"model": recipe.model.model_dump(mode="json"), "eval": recipe.eval.model_dump(mode="json"),
            "template": [recipe.data.template, recipe.data.instruction_prefix, recipe.data.cot], "seed": recipe.seed}


def reuse_base_evaluation(recipe: Recipe, sweep_dir: Path) -> None:
    """Give this trial's run the base model's results of an earlier trial whose base evaluation is the same
    (`_base_identity`), into its `eval/base/`, which the run's evaluation then finds done: every trial of a
    sweep that searches training settings evaluates the same base on the same tasks, and on a GPU with an 8B
    model that is minutes per trial. Read from the other trial's saved recipe; any doubt, and the run evaluates
    its base itself."""
    import shutil

    import yaml
    from pydantic import ValidationError
    if not recipe.eval.baseline or (recipe.run_dir / "eval" / "base" / "results.json").exists():
        return
    mine = _base_identity(recipe)
    for other in sorted(sweep_dir.glob("trial-*/eval/base/results.json")):
        run_dir = other.parents[2]
        if run_dir == recipe.run_dir:
            continue
        try:
            theirs = Recipe.model_validate(yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError, TypeError):
            continue
        if _base_identity(theirs) != mine:
            continue
        target = recipe.run_dir / "eval" / "base"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name("base.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(other.parent, staging)
        staging.replace(target)
        log.info("%s: the base model's evaluation is %s's (the same model, tasks and template)", recipe.name,
                 run_dir.name)
        return


def _failed(trial, why: str) -> float:
    """Record why the trial failed (the table's note) and end it as failed, counted."""
    log.warning("trial %d %s", trial.number, why)
    trial.set_user_attr(ERROR_ATTR, why)
    raise TrialFailed(why, trial.number)


def _record(trial, metrics: dict, recipe: Recipe) -> None:
    """The run's outcome as the trial's attributes: the table, the plots and the constraint read them."""
    from tunelab.eval.retention import overall
    retention = metrics.get("retention") or {}
    attrs = {"score": (metrics.get("score") or {}).get("value"),
             "accuracy": (metrics.get("score") or {}).get("accuracy"),
             "ratio": (metrics.get("ratio") or {}).get("ratio"),
             "retention": overall(retention),
             "best_checkpoint": metrics.get("best_checkpoint"),
             "train_seconds": (metrics.get("train") or {}).get("train_seconds")}
    for key, value in attrs.items():
        if value is not None:
            trial.set_user_attr(key, value)
    # TPE models where the feasible region is, and `study.best_trial` is the best feasible trial. (Optuna 5
    # deprecated the sampler's `constraints_func` for this per-trial call.) A pruned or failed trial has none.
    trial.set_constraint(RETENTION, constraint_of(metrics, recipe.eval.retention_threshold))
