"""What a run's evaluation sends to its trackers (`recipe.report_to`): each checkpoint's metrics at its step
(the base at step 0), with the score that checkpoint would get, and the outcome — retention, ratio, the best
checkpoint's score — at the best checkpoint's step, so a dashboard draws score against step. The trackers are
the run's own (`tunelab.track`), continued from training; what was sent once is not sent again when a resumed
run finds its evaluations cached."""

from __future__ import annotations

from pathlib import Path

from tunelab.recipe import Recipe
from tunelab.runs import step_of


def track_evaluations(recipe: Recipe, metrics: dict) -> None:
    if not recipe.report_to:
        return
    from tunelab.track.names import checkpoint_metrics, outcome_metrics
    from tunelab.track.run import open_run_trackers
    scores = metrics.get("checkpoint_scores") or {}
    with open_run_trackers(recipe, recipe.run_dir) as trackers:
        if metrics.get("base"):
            trackers.log_once("eval/base", checkpoint_metrics(metrics["base"]), 0)
        for name, results in (metrics.get("checkpoints") or {}).items():
            values = checkpoint_metrics(results)
            if name in scores:
                values["eval/score"] = scores[name]
            trackers.log_once(f"eval/{name}", values, step_of(Path(name)))
        best = metrics.get("best_checkpoint")
        outcome = outcome_metrics(metrics)
        if best and outcome:
            trackers.log_once(f"outcome/{best}", outcome, step_of(Path(best)))
