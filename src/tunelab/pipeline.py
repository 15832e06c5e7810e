"""`tunelab run`: the whole pipeline for one recipe — measure the base, train, evaluate every checkpoint,
check retention, compute ratio and score, and write metrics.json + report.md into the run directory.

A pretraining run (a `corpus` source) has no competition score or low-parameter ratio: its best checkpoint
is the one with the lowest validation loss (the trainer's `best_checkpoint`), its eval tasks (typically
`ppl` and `continuation` on the corpus's val split) run on the checkpoints as configured, and metrics.json
also records validation losses per checkpoint and the training throughput (tokens/s, MFU).

This module only orchestrates: what to evaluate is `tunelab.eval.sets`, running it `tunelab.eval.runner`,
retention `tunelab.eval.retention`, checkpoint choice `tunelab.runs`, ratio and score `tunelab.scoring`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunelab.data.records import write_json
from tunelab.data.templates import PromptTemplate
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, load_recipe
from tunelab.runs import best_label, list_checkpoints, model_dir_of


def _cached_eval(model_dir, sets, out_dir: Path, recipe: Recipe, template, label) -> dict:
    """Evaluate unless this directory already holds complete results (so --resume skips finished work)."""
    from tunelab.eval.runner import evaluate_model_dir
    done = out_dir / "results.json"
    if done.exists():
        results = json.loads(done.read_text(encoding="utf-8"))
        if set(results) == set(sets) and all(
                results[k].get("mode", "generate") == es.mode for k, es in sets.items()):
            return results
    return evaluate_model_dir(model_dir, sets, out_dir, recipe.eval.batch_size, recipe.eval.max_new_tokens,
                              template=template, label=label)


def run(recipe: Recipe, resume: bool = False) -> dict:
    from tunelab.eval.retention import retention
    from tunelab.eval.sets import eval_sets
    from tunelab.scoring import competition_score, low_param_ratio
    from tunelab.train.loop import train

    template = PromptTemplate(recipe.data.template, recipe.data.instruction_prefix, recipe.data.cot)
    from tunelab.prepare import build_corpora
    build_corpora(recipe)
    sets = eval_sets(recipe.eval)  # every eval mistake is found before training starts
    summary = train(recipe, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone evaluates and reports
        return {}
    if recipe.data.corpus:
        return _run_pretraining(recipe, sets, summary, template)
    run_dir = recipe.run_dir
    ability = [t.label for t in recipe.eval.tasks if t.ability]
    acc_task = recipe.score.accuracy_task
    if sets and acc_task not in sets:
        raise TunelabError(f"score.accuracy_task '{acc_task}' is not among the eval tasks", field="score.accuracy_task")

    base_results = None
    if sets and recipe.eval.baseline and recipe.model.path:
        base_results = _cached_eval(recipe.model.path, sets, run_dir / "eval" / "base", recipe, template, "base")

    ckpts = list_checkpoints(run_dir)
    if recipe.eval.checkpoints == "last":
        ckpts = ckpts[-1:]
    per_ckpt = {}
    for c in ckpts if sets else []:
        per_ckpt[c.name] = _cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name)

    metrics: dict = {"name": recipe.name, "train": summary}
    if per_ckpt:
        primary = _primary(acc_task, sets)
        best = best_label(per_ckpt, acc_task, sets[acc_task].task)
        metrics.update({"base": base_results, "checkpoints": per_ckpt, "best_checkpoint": best})
        accuracy = per_ckpt[best][acc_task][primary]
        total = recipe.score.total_params or summary["total_params"]
        ratio = low_param_ratio(summary["trainable_params"], total)
        metrics["ratio"] = {"trainable": summary["trainable_params"], "total": total, "ratio": ratio}
        metrics["score"] = {"formula": recipe.score.formula, "accuracy": accuracy,
                            "value": competition_score(recipe.score.formula, accuracy, ratio)}
        if base_results:
            metrics["accuracy_gain"] = accuracy - base_results[acc_task][primary]
            metrics["retention"] = retention(base_results, per_ckpt[best], ability,
                                             recipe.eval.retention_threshold)
        from tunelab.report import plot_checkpoints
        plot_checkpoints(metrics, acc_task, primary, ability, run_dir / "checkpoints.png")
    write_json(run_dir / "metrics.json", metrics)
    from tunelab.report import write_report
    write_report(recipe, metrics, run_dir / "report.md")
    return metrics


def _run_pretraining(recipe: Recipe, sets: dict, summary: dict, template) -> dict:
    """Evaluate a pretraining run's checkpoints; the best is the trainer's (lowest validation loss)."""
    run_dir = recipe.run_dir
    ckpts = list_checkpoints(run_dir)
    val_loss = {c.name: json.loads((c / "state.json").read_text(encoding="utf-8")).get("val_loss") for c in ckpts}
    best, best_by = summary.get("best_checkpoint"), "val_loss"
    if best:
        best = Path(best).name
    chosen = ckpts[-1:] if recipe.eval.checkpoints == "last" else list(ckpts)
    if best and recipe.eval.checkpoints == "last":  # the best is always measured: it is the one served
        chosen = [c for c in ckpts if c.name == best or c == ckpts[-1]]
    per_ckpt = {c.name: _cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name)
                for c in (chosen if sets else [])}
    if not best and per_ckpt:  # no validation loss (no val split): the first task's primary metric decides
        first = next(iter(sets))
        best, best_by = best_label(per_ckpt, first, sets[first].task), f"{first}.{_primary(first, sets)}"
    if not best and ckpts:
        best, best_by = ckpts[-1].name, "last"
    metrics: dict = {"name": recipe.name, "pretraining": True, "train": summary, "best_checkpoint": best,
                     "best_by": best_by, "best_val_loss": summary.get("best_val_loss", val_loss.get(best)),
                     "val_loss": val_loss, "throughput": throughput(summary)}
    if per_ckpt:
        metrics["checkpoints"] = per_ckpt
        metrics["tasks"] = {label: {"task": es.task.name, "primary_metric": es.task.primary_metric,
                                    "higher_is_better": es.task.higher_is_better, "data": es.source}
                            for label, es in sets.items()}
    write_json(run_dir / "metrics.json", metrics)
    from tunelab.report import write_report
    write_report(recipe, metrics, run_dir / "report.md")
    return metrics


def throughput(summary: dict) -> dict:
    """The training speed the trainer measured: tokens/s and MFU (medians over the logged windows after the
    first), the peak TFLOP/s and the FLOPs per token MFU was computed with."""
    keys = ("tokens_per_s", "mfu", "peak_tflops", "flops_per_token")
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))}


def _primary(label: str, sets: dict) -> str:
    return sets[label].task.primary_metric


def cli_run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    metrics = run(recipe, resume=args.resume)
    if not metrics:
        return 0
    from tunelab.report import summary_lines
    print("\n".join(summary_lines(metrics)))
    print(f"report: {recipe.run_dir / 'report.md'}")
    return 0


def cli_train(args) -> int:
    from tunelab.train.loop import train
    recipe = load_recipe(args.recipe, args.overrides)
    from tunelab.prepare import build_corpora
    build_corpora(recipe)
    summary = train(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"{summary['train_seconds']:.0f}s; checkpoints in {recipe.run_dir / 'checkpoints'}")
    return 0
