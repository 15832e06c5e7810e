"""Every run kind `tunelab run` knows, in the order they are asked whether a recipe (or a metrics.json) is
theirs: a pretraining run (`data.corpus`), a course fine-tuning (its base is a pretraining run; or it is an
evaluated later stage on a course run), else a competition run. Adding a kind is one module
(`tunelab.pipeline.run_kind`) and one entry here."""

from __future__ import annotations

from pathlib import Path

from tunelab.pipeline import competition, course, pretraining
from tunelab.pipeline.run_kind import RunKind
from tunelab.recipe import Recipe

KINDS: tuple[RunKind, ...] = (pretraining.KIND, course.KIND, competition.KIND)  # competition claims the rest


def kind_for(recipe: Recipe, base_run: Path | None) -> RunKind:
    """The kind of run `recipe` makes; `base_run` is the run directory its `model.path` named, if any."""
    return next(kind for kind in KINDS if kind.owns_recipe(recipe, base_run))


def kind_of(metrics: dict) -> RunKind:
    """The kind of run that wrote this metrics.json."""
    return next(kind for kind in KINDS if kind.owns_metrics(metrics))


def summary_lines(metrics: dict) -> list[str]:
    """What `tunelab run` prints at the end, and the report's summary: the run kind's few lines."""
    return kind_of(metrics).summary(metrics)


def write_report(recipe: Recipe, metrics: dict, out: Path) -> None:
    """report.md for a run's metrics, by the kind of run that wrote them."""
    kind_of(metrics).write_report(recipe, metrics, out)
