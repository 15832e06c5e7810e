"""What a sweep optimises, read from what a run already measures: the competition score of its best checkpoint
(the default), a task's metric at that checkpoint (`arithmetic/accuracy`, `reading/f1`), or a pretraining run's
best validation loss (`val_loss`). Each also has a value per checkpoint, which the trial reports to Optuna as
training goes, so a trial that is clearly behind the others at the same point of its training is pruned there.

The retention verdict is not part of the value: it is the sweep's constraint (`constraint_of`), so a trial that
loses the base's abilities never wins however high it scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe
from tunelab.runs import best_results

SCORE, VAL_LOSS = "score", "val_loss"


@dataclass(frozen=True)
class Objective:
    """`name`: score | val_loss | <task label>/<metric>; `direction`: maximize | minimize."""

    name: str
    direction: str

    def at_checkpoint(self, recipe: Recipe, written) -> float | None:
        """The value of one checkpoint just written (`tunelab.pipeline.WrittenCheckpoint`), or None when this
        objective has none for it."""
        if self.name == VAL_LOSS:
            return written.val_loss
        results = written.evaluate()
        if not results:
            return None
        if self.name == SCORE:
            from tunelab.scoring import competition_score, low_param_ratio
            task = recipe.score.accuracy_task
            value = _metric(results, task, _primary(recipe, task))
            total = recipe.score.total_params or written.total_params
            return competition_score(recipe.score.formula, value, low_param_ratio(written.trainable_params, total))
        task, metric = self.name.split("/", 1)
        return _metric(results, task, metric)

    def final(self, metrics: dict) -> float:
        """The trial's value from its run's metrics.json."""
        if self.name == SCORE:
            if "score" not in metrics:
                raise TunelabError("the run has no competition score (no evaluated checkpoint); the objective "
                                   "`score` needs an accuracy task among eval.tasks", field="objective")
            return float(metrics["score"]["value"])
        if self.name == VAL_LOSS:
            if metrics.get("best_val_loss") is None:
                raise TunelabError("the run measured no validation loss: the objective val_loss needs a corpus "
                                   "run", field="objective")
            return float(metrics["best_val_loss"])
        task, metric = self.name.split("/", 1)
        return _metric(best_results(metrics), task, metric)


def _metric(results: dict, task: str, metric: str) -> float:
    if task not in results:
        raise TunelabError(f"no results for task '{task}' (evaluated: {', '.join(results) or 'none'})",
                           field="objective")
    value = results[task].get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        numbers = sorted(k for k, v in results[task].items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise TunelabError(f"task '{task}' has no metric '{metric}'; it has: {', '.join(numbers)}", field="objective")
    return float(value)


def _primary(recipe: Recipe, label: str) -> str:
    from tunelab.tasks.registry import get_task
    for t in recipe.eval.tasks:
        if t.label == label:
            return get_task(t.task).primary_metric
    raise TunelabError(f"score.accuracy_task '{label}' is not among the eval tasks", field="score.accuracy_task")


def objective_for(name: str, recipe: Recipe, direction: str | None = None) -> Objective:
    """The objective `name` for the sweep of `recipe`, its direction from what it measures unless given."""
    labels = [t.label for t in recipe.eval.tasks]
    if name == SCORE:
        if recipe.score.accuracy_task not in labels:
            raise TunelabError(f"the objective score needs score.accuracy_task ('{recipe.score.accuracy_task}') "
                               f"among the recipe's eval tasks ({', '.join(labels) or 'none'})", field="objective")
        natural = "maximize"
    elif name == VAL_LOSS:
        if recipe.data.corpus is None:
            raise TunelabError("the objective val_loss is a pretraining (corpus) run's", field="objective")
        natural = "minimize"
    else:
        task, _, metric = name.partition("/")
        if not metric or task not in labels:
            raise TunelabError(f"expects score, val_loss or <task>/<metric> with a task of the recipe "
                               f"({', '.join(labels) or 'none'}), e.g. {labels[0] if labels else 'arithmetic'}/"
                               f"accuracy; got '{name}'", field="objective")
        from tunelab.tasks.registry import get_task
        spec = next(t for t in recipe.eval.tasks if t.label == task)
        kind = get_task(spec.task)
        natural = "minimize" if metric == kind.primary_metric and not kind.higher_is_better else "maximize"
    return Objective(name, direction or natural)


def constraint_of(metrics: dict, threshold: float) -> float:
    """The retention constraint (feasible at <= 0): the largest shortfall of a retained ability below the
    threshold (`retained` is tuned / base), so 0.05 means "5 points of the base short"; 0 when the run has no
    retention to keep (no baseline or no ability task)."""
    retained = [float(v["retained"]) for v in (metrics.get("retention") or {}).values()
                if v.get("retained") is not None]  # a base too close to zero constrains nothing
    return max((threshold - r for r in retained), default=0.0) if retained else 0.0
