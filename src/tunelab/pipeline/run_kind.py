"""What a run kind is: the part of `tunelab run` that differs between a competition fine-tuning, a pretraining
run and a course fine-tuning — which recipes are its own, which checkpoint is best, what metrics.json holds,
and what its summary and report say. Everything else (preparing, training, evaluating, writing metrics.json and
report.md) is the pipeline's, the same for every kind.

A new kind is one new module that defines a `RunKind` and one entry in `tunelab.pipeline.kinds.KINDS`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tunelab.data.templates import PromptTemplate
from tunelab.recipe import Recipe
from tunelab.report import render_report

if TYPE_CHECKING:
    from tunelab.eval.resident import Reloading


@dataclass(frozen=True)
class TrainedRun:
    """What every kind's evaluation starts from: the recipe, its eval sets, the trainer's summary, the prompt
    template, the base run directory (when `model.path` named one) and the run's model source."""

    recipe: Recipe
    sets: dict
    summary: dict
    template: PromptTemplate
    base_run: Path | None
    models: Reloading


@dataclass(frozen=True)
class RunKind:
    """One kind of run: its module's functions, which `tunelab run` calls in this order — owns_recipe (is the
    recipe this kind's), check (before training), measure, then summary_lines and report_sections for report.md."""

    owns_recipe: Callable[[Recipe, Path | None], bool]  # (recipe, base run): is this run of the kind?
    owns_metrics: Callable[[dict], bool]  # is this metrics.json a run of the kind?
    measure: Callable[[TrainedRun], dict]  # evaluate, choose the best checkpoint, plot: metrics.json's content
    summary_lines: Callable[[dict], list[str]]  # the few lines `tunelab run` prints and the report opens with
    report_sections: Callable[[Recipe, dict, Path], list[str]]  # (recipe, metrics, run dir): the report's body
    # (recipe, eval sets): what measure will need of them, checked before training (a recipe error then costs
    # nothing): raises TunelabError
    check: Callable[[Recipe, dict], None] = lambda recipe, sets: None

    def write_report(self, recipe: Recipe, metrics: dict, out: Path) -> None:
        """report.md: the frame every report has (`tunelab.report.render_report`) around this kind's lines; the
        last stage of a chain (`tunelab.pipeline.chain`) opens them with every stage's gain and cost."""
        from tunelab.pipeline.chain_report import chain_report_lines
        chain = chain_report_lines(metrics["chain"]) if metrics.get("chain") else []
        out.write_text(render_report(recipe, self.summary(metrics),
                                     chain + self.report_sections(recipe, metrics, out.parent)), encoding="utf-8")

    def summary(self, metrics: dict) -> list[str]:
        """The lines `tunelab run` prints and the report opens with: a chain's stages first, then the kind's."""
        from tunelab.pipeline.chain_report import chain_summary_lines
        return chain_summary_lines(metrics.get("chain") or []) + self.summary_lines(metrics)
