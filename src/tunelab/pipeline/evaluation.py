"""Evaluating a run's models, the same way for every run kind: the base and the chosen checkpoints, each with
the run's model source (on a GPU one resident base, `tunelab.eval.resident`), each result kept in
`eval/<name>/results.json` so a resumed run skips finished work, and under torchrun each rank its share.

Which checkpoints to evaluate and which one is best is the run kind's to say (`tunelab.pipeline.competition`,
`.pretraining`, `.course`); running the tasks is `tunelab.eval.runner`'s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.data.templates import PromptTemplate
from tunelab.recipe import Recipe
from tunelab.records import read_json_object
from tunelab.runs import list_checkpoints, model_dir_of

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tunelab.eval.resident import Reloading


def eval_placement(recipe: Recipe) -> dict:
    """Where a run's evaluation loads models: eval.device, else the device it trained on (never the host
    while a GPU sits idle), at eval.precision."""
    return {"device": recipe.eval.device or recipe.train.device, "precision": recipe.eval.precision}


def run_models(recipe: Recipe) -> Reloading:
    """The source of every model a run evaluates: with `engine.kind: vllm` one vLLM server, the base loaded once
    and each checkpoint's adapter by name (`tunelab.eval.vllm_models`, its log the run's vllm.log); else the
    embedded engine's (`tunelab.eval.resident`): on a GPU the base stays on the device and each checkpoint's
    adapter is swapped in, on the CPU each is loaded and merged."""
    from tunelab.eval.vllm_models import models_for
    return models_for(recipe.engine, recipe.run_dir, **eval_placement(recipe))


def evaluate_checkpoints(recipe: Recipe, sets: dict, template: PromptTemplate, checkpoints: list[Path],
                         models: Reloading, base_label: str | None = None) -> tuple[dict | None, dict[str, dict]]:
    """(the base model's results, each checkpoint's by name): the base (`model.path`, as `base_label`) when
    one is given and `eval.baseline` asks for it, then every checkpoint given. No eval sets, no evaluation."""
    if not sets:
        return None, {}
    run_dir = recipe.run_dir
    base = None
    if base_label and recipe.eval.baseline and recipe.model.path:
        base = cached_eval(recipe.model.path, sets, run_dir / "eval" / "base", recipe, template, base_label, models)
    per_ckpt = {c.name: cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name,
                                     models)
                for c in checkpoints}
    return base, per_ckpt


def task_records(sets: dict) -> dict[str, dict]:
    """What metrics.json records about each eval task: its name, primary metric, direction and data."""
    return {label: {"task": es.task.name, "primary_metric": es.task.primary_metric,
                    "higher_is_better": es.task.higher_is_better, "data": es.source}
            for label, es in sets.items()}


def evaluate_share(recipe: Recipe, sets: dict, template, rank: int, world: int, models) -> None:
    """Under torchrun, every rank evaluates its share of the checkpoints (and one rank the base) on its own
    device, then waits for the others: rank 0's report finds every result in place (`cached_eval`) instead of
    evaluating all of them alone while the other GPUs sit idle. The wait is a gloo barrier of its own, with a
    timeout long enough for an evaluation (a collective's default would end a long one)."""
    import datetime

    import torch.distributed as td
    run_dir = recipe.run_dir
    jobs = [(model_dir_of(c), c.name) for c in list_checkpoints(run_dir)] if recipe.eval.checkpoints == "all" else []
    if recipe.eval.baseline and recipe.model.path:
        jobs.append((recipe.model.path, "base"))
    waiting = td.new_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    for model_dir, name in jobs[rank::world]:
        log.info(f"rank {rank}: evaluating {name}")
        cached_eval(model_dir, sets, run_dir / "eval" / name, recipe, template, name, models)
    if rank != 0:
        models.close()  # rank 0 goes on to the report with what it holds
    td.barrier(group=waiting)


def cached_eval(model_dir, sets, out_dir: Path, recipe: Recipe, template, label, models=None) -> dict:
    """Evaluate unless this directory already holds complete results (so --resume skips finished work).
    `models` is the run's `tunelab.eval.resident` source: on a GPU one base serves every checkpoint."""
    from tunelab.eval.runner import evaluate_model_dir
    done = out_dir / "results.json"
    if done.exists():
        results = read_json_object(done)
        if set(results) == set(sets) and all(
                results[k].get("mode", "generate") == es.mode for k, es in sets.items()):
            return results
    return evaluate_model_dir(model_dir, sets, out_dir, recipe.eval.batch_size, recipe.eval.max_new_tokens,
                              template=template, label=label, models=models, **eval_placement(recipe))
