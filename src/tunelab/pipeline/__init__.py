"""`tunelab run`: the whole pipeline for one recipe — prepare, train, evaluate the base and every checkpoint,
and write metrics.json + report.md into the run directory. The same steps for every run; what differs between
a competition fine-tuning, a pretraining run and a course fine-tuning (which checkpoint is best, what
metrics.json holds, what the report says) is the run kind's (`tunelab.pipeline.kinds`), one module each.

This package only orchestrates: preparation is `.prepare`, evaluating a run's models `.evaluation` (over
`tunelab.eval`), checkpoint choice `tunelab.runs`, ratio and score `tunelab.scoring`. `tunelab train`'s work
(`train_recipe`) lives here too, since it prepares a recipe the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.data.templates import recipe_template
from tunelab.pipeline.evaluation import evaluate_checkpoints, evaluate_share, run_models
from tunelab.pipeline.kinds import kind_for
from tunelab.pipeline.prepare import prepare_inputs
from tunelab.pipeline.run_kind import TrainedRun
from tunelab.pipeline.tracking import track_evaluations
from tunelab.recipe import Recipe
from tunelab.records import write_json


@dataclass(frozen=True)
class WrittenCheckpoint:
    """A checkpoint training has just made whole, as `run`'s `on_checkpoint` receives it: where it is, its step
    and index among the run's checkpoints (1 = the first), its validation loss (corpus runs), the parameter
    counts the ratio is made of, and `evaluate()`: this checkpoint on the run's eval tasks, through the run's own
    evaluation and its cache (`eval/<checkpoint>/results.json`), so the report after training reuses it."""

    path: Path
    step: int
    index: int
    val_loss: float | None
    trainable_params: int
    total_params: int
    evaluate: Callable[[], dict]


def run(recipe: Recipe, resume: bool = False,
        on_checkpoint: Callable[[WrittenCheckpoint], None] | None = None,
        before_evaluation: Callable[[], None] | None = None) -> dict:
    """The whole pipeline, with the run locked against other writers from training to the report (under
    torchrun, rank 0 holds the lock; `tunelab.train.run_lock`). `on_checkpoint` (one process only: a sweep's
    trial) sees each checkpoint as it is written; an exception it raises stops the run there.
    `before_evaluation` (rank 0) runs once training is done: a chain's stage puts what is already measured
    into the run's evaluation cache (`tunelab.pipeline.chain`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return _run(recipe, resume)
    from tunelab.train.run_lock import run_lock
    with run_lock(recipe.run_dir):
        return _run(recipe, resume, on_checkpoint, before_evaluation)


def _run(recipe: Recipe, resume: bool, on_checkpoint=None, before_evaluation=None) -> dict:
    from tunelab.eval.sets import eval_sets
    from tunelab.train.loop import train

    template = recipe_template(recipe.data)
    base_run = prepare_inputs(recipe)
    sets = eval_sets(recipe.eval)  # every eval mistake is found before training starts
    judge_against_run_base(recipe, sets)
    kind = kind_for(recipe, base_run)
    kind.check(recipe, sets)  # and what the run kind's measure needs of them
    rewards = training_rewards(recipe)  # and every reward mistake
    models = run_models(recipe)  # on a GPU it keeps the trained model's base for the evaluation
    try:
        hook = None
        if on_checkpoint is not None:
            def hook(path: Path, info: dict) -> None:
                on_checkpoint(WrittenCheckpoint(path=path, **info, evaluate=lambda: evaluate_checkpoints(
                    recipe, sets, template, [path], models)[1].get(path.name, {})))
        summary = train(recipe, resume=resume, hand_over=models.adopt if sets else None, on_checkpoint=hook,
                        rewards=rewards)
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if before_evaluation is not None:
            before_evaluation()
        if world > 1 and sets:
            evaluate_share(recipe, sets, template, rank, world, models)
        if rank != 0:  # under torchrun, rank 0 alone reports
            return {}
        metrics = kind.measure(TrainedRun(recipe, sets, summary, template, base_run, models))
        write_json(recipe.run_dir / "metrics.json", metrics)
        kind.write_report(recipe, metrics, recipe.run_dir / "report.md")
        track_evaluations(recipe, metrics)
        if recipe.score.handin:
            write_handin(recipe.run_dir, recipe.score.handin)
        return metrics
    finally:
        models.close()


def write_handin(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """`score.handin`: the run's hand-in (`tunelab.handin`) in `out` (default: its `handin/`), replaced when a
    resumed run writes it again (it is made of the run's files, all still there)."""
    import logging
    import shutil

    from tunelab.handin import handin
    out = out if out is not None else run_dir / "handin"
    shutil.rmtree(out, ignore_errors=True)
    written = handin(run_dir, out, fmt)
    logging.getLogger(__name__).info(f"hand-in written: {written}")
    return written


def judge_against_run_base(recipe: Recipe, sets: dict) -> None:
    """Tasks scored on the base's own answers (`base_agreement`) take them from the run's base — the original
    base of a continued run — unless the recipe names another: a fully fine-tuned checkpoint has no adapter
    to tell its base by."""
    from tunelab.pipeline.competition import original_base
    base = original_base(recipe) or recipe.model.path
    for es in sets.values():
        if es.task.answers_from_base and not es.task.base and base:
            es.task.base = base


def train_recipe(recipe: Recipe, resume: bool = False) -> dict:
    """`tunelab train`: prepare the recipe's inputs as `run` does, then train only (no evaluation, no report).
    Returns the training summary (steps, final loss, seconds)."""
    from tunelab.train.loop import train
    prepare_inputs(recipe)
    return train(recipe, resume=resume, rewards=training_rewards(recipe))


def training_rewards(recipe: Recipe):
    """A `grpo` or `rft` run's reward (`train.grpo.rewards`, `train.rft.rewards`, built over the tasks' graders),
    else None."""
    method = recipe.train.method
    if recipe.train.sampling is None:
        return None
    from tunelab.eval.rewards import build_rewards
    return build_rewards(recipe.train.sampling.rewards, field=f"train.{method}.rewards")
