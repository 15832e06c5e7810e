"""`tunelab run` of a recipe with `stages:` (`tunelab.recipe.stages`): each stage's whole pipeline in turn, the
next starting from the one before, and one report — the last stage's, which is the chain's run — opening with
what every stage gained and what it cost. The hand-in (`score.handin`, in the chain's run) is made from the
chain's model (`chain_report.chain_choice`): a last stage that lost an ability is not what gets handed in.

What a stage evaluates that the one before already measured is carried over, not measured again: a stage's start
is the previous stage's best checkpoint, evaluated there on the same tasks, and the original base's abilities were
evaluated by the first stage. Carried only when the stage's `eval` section and prompt template are the previous
stage's (same model, same items, same settings: the same greedy answers), and said in the log.

Resuming (`--resume`): a stage with its metrics.json is finished and kept, the one that was stopped resumes, the
ones after it start. Without `--resume` an existing stage directory is an error, as for any run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from tunelab.recipe import Recipe
from tunelab.records import read_json_object, write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"  # in each stage's run directory: its place in the chain and its wall time


def run_chain(recipe: Recipe, resume: bool = False) -> dict:
    """Run every stage of `recipe` (one with `stages`), then put the chain into the last stage's metrics.json and
    report.md. Returns those metrics (empty on a rank other than 0 under torchrun)."""
    from tunelab.pipeline import run
    stages = recipe.stage_recipes
    main = int(os.environ.get("RANK", "0")) == 0
    for k, stage in enumerate(stages):
        name = recipe.stages[k].name
        if resume and (stage.run_dir / "metrics.json").is_file() and (stage.run_dir / STAGE_FILE).is_file():
            log.info(f"stage {k + 1}/{len(stages)} {name}: finished in {stage.run_dir}, kept")
            continue
        log.info(f"stage {k + 1}/{len(stages)} {name}: {stage.train.method} in {stage.run_dir}")
        carry = (lambda k=k, stage=stage: carry_evaluations(stages[0], stages[k - 1], stage)) if k > 0 else None
        started = time.monotonic()
        run(stage, resume=resume and (stage.run_dir / "recipe.yaml").is_file(), before_evaluation=carry)
        if main:
            write_json(stage.run_dir / STAGE_FILE, {"stage": name, "index": k, "of": len(stages),
                                                    "method": stage.train.method,
                                                    "wall_seconds": round(time.monotonic() - started, 1)})
    if not main:
        return {}
    final = stages[-1]
    metrics = read_json_object(final.run_dir / "metrics.json")
    metrics["chain"] = chain_summary(recipe)
    write_json(final.run_dir / "metrics.json", metrics)
    from tunelab.pipeline.kinds import write_report
    write_report(final, metrics, final.run_dir / "report.md")
    if recipe.score.handin:
        write_chain_handin(recipe, metrics["chain"])
    return metrics


def write_chain_handin(recipe: Recipe, chain: list[dict]) -> Path:
    """The chain's hand-in, in its own run's `handin/`: made from the stage `chain_choice` names (the most accurate
    that keeps every ability), the last stage when none does or nothing was judged."""
    from tunelab.pipeline import write_handin
    from tunelab.pipeline.chain_report import chain_choice
    chosen = chain_choice(chain)
    names = [s.name for s in recipe.stages]
    source = recipe.stage_recipes[names.index(chosen["stage"]) if chosen is not None else -1]
    final = recipe.stage_recipes[-1]
    if source is not final:
        log.info(f"the hand-in is made from stage {chosen['stage']} ({source.run_dir}): the chain's model")
    return write_handin(source.run_dir, recipe.score.handin, out=final.run_dir / "handin")


def carry_evaluations(first: Recipe, before: Recipe, stage: Recipe) -> None:
    """Seed `stage`'s evaluation cache with what is already measured: its start (`eval/base`: the previous
    stage's best checkpoint) and the original base's abilities (`eval/original-base`, from the first stage's
    `eval/base`). Nothing when the evaluation differs, or when the stage has its own results already."""
    settings = _eval_settings(stage)
    if settings != _eval_settings(before):
        log.info("the stage's evaluation differs from the stage before's: its start is evaluated again")
        return
    best = read_json_object(before.run_dir / "metrics.json").get("best_checkpoint")
    if best:
        _copy_results(before.run_dir / "eval" / best, stage.run_dir / "eval" / "base", None,
                      f"its start ({before.name}'s {best})")
    if settings == _eval_settings(first):
        ability = [t.label for t in stage.eval.tasks if t.ability]
        if ability:
            _copy_results(first.run_dir / "eval" / "base", stage.run_dir / "eval" / "original-base", ability,
                          "the original base's abilities")


# what says which models a run evaluates and how it judges them, not what one model's results are
_NOT_A_MODELS_RESULTS = ("checkpoints", "scales", "baseline", "retention_threshold", "retention_min_base")


def _eval_settings(recipe: Recipe) -> tuple:
    """What one model's results depend on: the tasks and how they are asked (and by which engine)."""
    settings = {k: v for k, v in recipe.eval.model_dump(mode="json").items() if k not in _NOT_A_MODELS_RESULTS}
    return (settings, recipe.eval.device or recipe.train.device, recipe.data.template,
            recipe.engine.model_dump(mode="json"))


def _copy_results(source: Path, dest: Path, tasks: list[str] | None, what: str) -> None:
    """`source`'s results.json (only `tasks` when given) and its tasks' prediction files into `dest`, when `dest`
    holds none yet and `source` holds every task asked."""
    results_file = source / "results.json"
    if (dest / "results.json").exists() or not results_file.is_file():
        return
    results = read_json_object(results_file)
    if tasks is not None:
        if not set(tasks) <= set(results):
            return
        results = {k: results[k] for k in tasks}
    dest.mkdir(parents=True, exist_ok=True)
    for task in results:
        predictions = source / f"{task}.predictions.jsonl"
        if predictions.is_file():
            shutil.copy(predictions, dest / predictions.name)
    write_json(dest / "results.json", results)
    log.info(f"{what}: carried from {source} (the same model on the same tasks), not evaluated again")


def chain_summary(recipe: Recipe) -> list[dict]:
    """Each stage, first to last: its run, method, steps and times, its best checkpoint, the accuracy it started
    from and reached (paired change with its interval on the same items), its score and its retention of the
    original base's abilities."""
    from tunelab.eval.retention import overall
    out = []
    for stage_config, stage in zip(recipe.stages, recipe.stage_recipes):
        m = read_json_object(stage.run_dir / "metrics.json")
        timing = read_json_object(stage.run_dir / STAGE_FILE) if (stage.run_dir / STAGE_FILE).is_file() else {}
        train = m.get("train") or {}
        entry = {"stage": stage_config.name, "run_dir": str(stage.run_dir), "method": stage.train.method,
                 "steps": train.get("steps"), "train_seconds": train.get("train_seconds"),
                 "wall_seconds": timing.get("wall_seconds"), "best_checkpoint": m.get("best_checkpoint")}
        if "score" in m:
            accuracy = m["score"]["accuracy"]
            entry.update({"accuracy": accuracy, "score": m["score"]["value"], "ratio": m["ratio"]["ratio"]})
            if "accuracy_gain" in m:
                entry["start_accuracy"] = accuracy - m["accuracy_gain"]
            if m.get("accuracy_change"):
                entry["change"] = m["accuracy_change"]
            if m.get("retention") is not None:
                entry["retention"] = {"verdict": overall(m["retention"]), "entries": m["retention"]}
        out.append(entry)
    return out
