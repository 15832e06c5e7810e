"""`tunelab run`: the whole pipeline for one recipe — measure the base, train, evaluate every checkpoint,
check retention, compute ratio and score, and write metrics.json + report.md into the run directory.

A pretraining run (a `corpus` source) has no competition score or low-parameter ratio: its best checkpoint
is the one with the lowest validation loss (the trainer's `best_checkpoint`), its eval tasks (typically
`ppl` and `continuation` on the corpus's val split) run on the checkpoints as configured, and metrics.json
also records validation losses per checkpoint and the training throughput (tokens/s, MFU).

A fine-tuning run whose `model.path` is a pretraining run directory (the course path: MiniGPT pretrained,
then fine-tuned on question-answer pairs) starts from that run's best checkpoint and gets a course report
instead of a competition score: the pretrained model next to the fine-tuned one on every eval task (as
`eval/base`, each with its own saved template), the fine-tuning loss with the held-out answers' loss per
checkpoint as its validation curve, and sample answers of both (`tunelab.report.course_report`). A pretraining
run built from generated encyclopedia articles splits their QA pairs by the corpus's document split for that
fine-tuning (`<articles>/../sft-qa/`, `tunelab.data.encyclopedia.split_qa_by_corpus`).

This module only orchestrates: what to evaluate is `tunelab.eval.sets`, running it `tunelab.eval.runner`,
retention `tunelab.eval.retention`, checkpoint choice `tunelab.runs`, ratio and score `tunelab.scoring`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunelab.records import write_json
from tunelab.data.templates import PromptTemplate
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, load_recipe
from tunelab.runs import best_label, is_run_dir, list_checkpoints, model_dir_of, pick_checkpoint


def _cached_eval(model_dir, sets, out_dir: Path, recipe: Recipe, template, label, models=None) -> dict:
    """Evaluate unless this directory already holds complete results (so --resume skips finished work).
    `models` is the run's `tunelab.model.resident` source: on a GPU one base serves every checkpoint."""
    from tunelab.eval.runner import evaluate_model_dir
    done = out_dir / "results.json"
    if done.exists():
        results = json.loads(done.read_text(encoding="utf-8"))
        if set(results) == set(sets) and all(
                results[k].get("mode", "generate") == es.mode for k, es in sets.items()):
            return results
    return evaluate_model_dir(model_dir, sets, out_dir, recipe.eval.batch_size, recipe.eval.max_new_tokens,
                              template=template, label=label, models=models, **eval_placement(recipe))


def evaluate_share(recipe: Recipe, sets: dict, template, rank: int, world: int, models) -> None:
    """Under torchrun, every rank evaluates its share of the checkpoints (and one rank the base) on its own
    device, then waits for the others: rank 0's report finds every result in place (`_cached_eval`) instead of
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
        print(f"rank {rank}: evaluating {name}")
        _cached_eval(model_dir, sets, run_dir / "eval" / name, recipe, template, name, models)
    if rank != 0:
        models.close()  # rank 0 goes on to the report with what it holds
    td.barrier(group=waiting)


def eval_placement(recipe: Recipe) -> dict:
    """Where a run's evaluation loads models: eval.device, else the device it trained on (never the host
    while a GPU sits idle), at eval.precision."""
    return {"device": recipe.eval.device or recipe.train.device, "precision": recipe.eval.precision}


def run_models(recipe: Recipe):
    """The source of every model a run evaluates (`tunelab.model.resident`): on a GPU the base stays on the
    device and each checkpoint's adapter is swapped in; on the CPU each is loaded and merged."""
    from tunelab.model.resident import model_source
    return model_source(**eval_placement(recipe))


def run(recipe: Recipe, resume: bool = False) -> dict:
    """The whole pipeline, with the run locked against other writers from training to the report (under
    torchrun, rank 0 holds the lock; `tunelab.train.run_lock`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return _run(recipe, resume)
    from tunelab.train.run_lock import run_lock
    with run_lock(recipe.run_dir):
        return _run(recipe, resume)


def _run(recipe: Recipe, resume: bool) -> dict:
    from tunelab.eval.sets import eval_sets
    from tunelab.train.loop import train

    template = PromptTemplate(recipe.data.template, recipe.data.instruction_prefix, recipe.data.cot)
    base_run = prepare_inputs(recipe)
    sets = eval_sets(recipe.eval)  # every eval mistake is found before training starts
    models = run_models(recipe)  # on a GPU it keeps the trained model's base for the evaluation
    try:
        summary = train(recipe, resume=resume, hand_over=models.adopt if sets else None)
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and sets:
            evaluate_share(recipe, sets, template, rank, world, models)
        if rank != 0:  # under torchrun, rank 0 alone reports
            return {}
        if recipe.data.corpus:
            return _run_pretraining(recipe, sets, summary, template, models)
        if base_run is not None and _is_pretraining_run(base_run):
            return _run_course(recipe, sets, summary, template, base_run, models)
        return _run_competition(recipe, sets, summary, template, models)
    finally:
        models.close()


def _run_competition(recipe: Recipe, sets: dict, summary: dict, template, models) -> dict:
    from tunelab.eval.retention import retention
    from tunelab.scoring import competition_score, low_param_ratio
    run_dir = recipe.run_dir
    ability = [t.label for t in recipe.eval.tasks if t.ability]
    acc_task = recipe.score.accuracy_task
    if sets and acc_task not in sets:
        raise TunelabError(f"score.accuracy_task '{acc_task}' is not among the eval tasks", field="score.accuracy_task")

    base_results = None
    if sets and recipe.eval.baseline and recipe.model.path:
        base_results = _cached_eval(recipe.model.path, sets, run_dir / "eval" / "base", recipe, template, "base",
                                    models)

    ckpts = list_checkpoints(run_dir)
    if recipe.eval.checkpoints == "last":
        ckpts = ckpts[-1:]
    per_ckpt = {}
    for c in ckpts if sets else []:
        per_ckpt[c.name] = _cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name,
                                      models)

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


def _run_pretraining(recipe: Recipe, sets: dict, summary: dict, template, models) -> dict:
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
    per_ckpt = {c.name: _cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name,
                                      models)
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


def prepare_inputs(recipe: Recipe) -> Path | None:
    """What `run` and `train` need before training: the recipe's corpora built, an encyclopedia corpus's QA
    pairs split for fine-tuning, and model.path resolved (a run directory, a .ckpt); returns the base run
    directory, if model.path named one."""
    from tunelab.prepare import build_corpora
    build_corpora(recipe)
    split_sft_qa(recipe)
    return resolve_base_run(recipe)


def split_sft_qa(recipe: Recipe) -> Path | None:
    """For a corpus built from generated encyclopedia articles: their QA pairs split by the corpus's document
    split into `sft-qa/{train,val}.jsonl` beside the articles folder (once; kept when present), what the
    fine-tuning recipes read. Returns the folder, or None for other runs."""
    src = recipe.data.train[0]
    if (src.corpus is None or src.replay is not None or src.build is None or src.build.encyclopedia is None
            or int(os.environ.get("RANK", "0")) != 0):
        return None
    articles = Path(src.build.encyclopedia.out)
    out = articles.parent / "sft-qa"
    if not (out / "summary.json").is_file():
        from tunelab.data.encyclopedia import split_qa_by_corpus
        s = split_qa_by_corpus([articles / "qa.jsonl"], src.corpus, out)
        print(f"QA pairs for fine-tuning: {s['train']:,} -> {out}/train.jsonl; held out: {s['val']:,} -> "
              f"{out}/val.jsonl ({out}/summary.json has the counts)")
    return out


def resolve_base_run(recipe: Recipe) -> Path | None:
    """A `model.path` naming a run directory: replaced by the path of that run's best checkpoint (what serve
    and eval load for it too); returns the run directory, or None when the path is a model itself. A MindFormers
    .ckpt is replaced by its converted HF directory (converted once, cached)."""
    if recipe.model.path and recipe.model.path.endswith(".ckpt"):
        from tunelab.model.mindformers_convert import hf_dir_for_ckpt
        m = recipe.model
        converted = hf_dir_for_ckpt(m.path, m.mindformers_config, m.tokenizer)
        recipe.model = m.model_copy(update={"path": str(converted), "mindformers_config": None})
        return None
    path = Path(recipe.model.path) if recipe.model.path else None
    if path is None or not is_run_dir(path):
        return None
    recipe.model.path = str(pick_checkpoint(path))
    return path


def _is_pretraining_run(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.json"
    return metrics.is_file() and bool(json.loads(metrics.read_text(encoding="utf-8")).get("pretraining"))


def _run_course(recipe: Recipe, sets: dict, summary: dict, template, base_run: Path, models) -> dict:
    """A fine-tuning run on a pretraining run: both models on every eval task, the held-out answers' loss of
    the pretrained model (step 0) and of every checkpoint (the validation curve; the best checkpoint is the
    lowest), the pretraining's own numbers, and the course report."""
    run_dir = recipe.run_dir
    ckpts = list_checkpoints(run_dir)
    qa_label = next((label for label, es in sets.items() if es.task.name == "rougel"), None)
    qa_loss: dict[str, dict] = {}
    if qa_label:
        from tunelab.eval.runner import answer_loss
        examples = sets[qa_label].examples
        for name, step, model_dir in [("base", 0, recipe.model.path),
                                      *((c.name, int(c.name.split("-")[-1]), model_dir_of(c)) for c in ckpts)]:
            qa_loss[name] = {"step": step, **answer_loss(model_dir, template, examples, recipe.eval.batch_size,
                                                          **eval_placement(recipe))}
    tuned = {n: v for n, v in qa_loss.items() if n != "base"}
    if tuned:
        best, best_by = min(tuned, key=lambda n: tuned[n]["loss"]), f"{qa_label} answer loss"
    else:
        best, best_by = (ckpts[-1].name if ckpts else None), "last"
    chosen = ckpts if recipe.eval.checkpoints == "all" else [c for c in ckpts if c.name == best or c == ckpts[-1]]
    base = None
    if sets and recipe.eval.baseline:
        base = _cached_eval(recipe.model.path, sets, run_dir / "eval" / "base", recipe, template, "pretrained",
                            models)
    per_ckpt = {c.name: _cached_eval(model_dir_of(c), sets, run_dir / "eval" / c.name, recipe, template, c.name,
                                      models)
                for c in (chosen if sets else [])}
    base_metrics = json.loads((base_run / "metrics.json").read_text(encoding="utf-8"))
    metrics: dict = {
        "name": recipe.name, "course": True, "train": summary, "template": template.name,
        "base_run": str(base_run), "base_model": recipe.model.path, "best_checkpoint": best, "best_by": best_by,
        "qa_loss": qa_loss, "qa_task": qa_label, "base": base, "checkpoints": per_ckpt,
        "tasks": {label: {"task": es.task.name, "primary_metric": es.task.primary_metric,
                          "higher_is_better": es.task.higher_is_better, "data": es.source}
                  for label, es in sets.items()},
        "base_pretraining": {k: base_metrics.get(k) for k in ("name", "best_checkpoint", "best_val_loss", "train")}}
    from tunelab.report import plot_course_curves
    plot_course_curves(run_dir / "metrics.jsonl", qa_loss, run_dir / "course.png", recipe.name)
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
    prepare_inputs(recipe)
    summary = train(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"{summary['train_seconds']:.0f}s; checkpoints in {recipe.run_dir / 'checkpoints'}")
    return 0
