"""A pretraining run (a `corpus` source): no competition score or low-parameter ratio. Its best checkpoint is the
trainer's (the lowest validation loss), else the first task's best, else the last; its eval tasks (typically
`ppl` and `continuation` on the corpus's val split) run on the checkpoints as configured, and metrics.json also
records validation losses per checkpoint and the training throughput (tokens/s, MFU).

Its report shows the best checkpoint by validation loss, validation perplexity next to a unigram model's on the
same positions (`ppl` on a corpus), Rouge-L and fact recall of continuations with a table of samples
(`continuation`), every checkpoint's validation loss and task metrics, the loss curves (loss.png: train and
validation) and the throughput."""

from __future__ import annotations

import math
from pathlib import Path

from tunelab.pipeline.evaluation import evaluate_checkpoints, task_records
from tunelab.pipeline.run_kind import RunKind, TrainedRun
from tunelab.recipe import Recipe
from tunelab.report import (best_title, checkpoint_cell, checkpoint_table, number, pct, results_with,
                            table_cell)
from tunelab.records import read_json_object
from tunelab.runs import best_label, best_results, list_checkpoints


def measure(run: TrainedRun) -> dict:
    """Evaluate a pretraining run's checkpoints; the best is the trainer's (lowest validation loss)."""
    recipe, sets, summary = run.recipe, run.sets, run.summary
    ckpts = list_checkpoints(recipe.run_dir)
    val_loss = {c.name: read_json_object(c / "state.json").get("val_loss") for c in ckpts}
    best, best_by = summary.get("best_checkpoint"), "val_loss"
    if best:
        best = Path(best).name
    chosen = ckpts[-1:] if recipe.eval.checkpoints == "last" else list(ckpts)
    if best and recipe.eval.checkpoints == "last":  # the best is always measured: it is the one served
        chosen = [c for c in ckpts if c.name == best or c == ckpts[-1]]
    _, per_ckpt = evaluate_checkpoints(recipe, sets, run.template, chosen, run.models)
    if not best and per_ckpt:  # no validation loss (no val split): the first task's primary metric decides
        first = next(iter(sets))
        best, best_by = best_label(per_ckpt, first, sets[first].task), f"{first}.{sets[first].task.primary_metric}"
    if not best and ckpts:
        best, best_by = ckpts[-1].name, "last"
    metrics: dict = {"name": recipe.name, "pretraining": True, "train": summary, "best_checkpoint": best,
                     "best_by": best_by, "best_val_loss": summary.get("best_val_loss", val_loss.get(best)),
                     "val_loss": val_loss, "throughput": throughput(summary)}
    if per_ckpt:
        metrics["checkpoints"] = per_ckpt
        metrics["tasks"] = task_records(sets)
    return metrics


def throughput(summary: dict) -> dict:
    """The training speed the trainer measured: tokens/s and MFU (medians over the logged windows after the
    first), the peak TFLOP/s and the FLOPs per token MFU was computed with."""
    keys = ("tokens_per_s", "mfu", "peak_tflops", "flops_per_token")
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))}


def summary_lines(metrics: dict) -> list[str]:
    lines = []
    best, t = metrics.get("best_checkpoint"), metrics["train"]
    if best:
        how = {"val_loss": "lowest validation loss", "last": "the last; no validation loss"}.get(
            metrics.get("best_by"), metrics.get("best_by"))
        val = metrics.get("best_val_loss")
        lines.append(f"best checkpoint: {best} ({how}" + (f": {val:.4f}, perplexity {math.exp(min(val, 700)):.2f}"
                                                          if isinstance(val, (int, float)) else "") + ")")
    results = best_results(metrics)
    for label, r in results_with(results, "unigram_perplexity").items():
        ppl, unigram = r["perplexity"], r["unigram_perplexity"]
        lines.append(f"{label}: validation perplexity {ppl:.2f} vs unigram {unigram:.2f} on the same {r['tokens']:,} "
                     f"tokens ({_versus_unigram(ppl, unigram)})")
    for label, r in results_with(results, "samples").items():
        text = (f"{label}: Rouge-L F {r['rougeL_f']:.1f} over {r['n']} continuations ({r['segmentation']}"
                + (f"; another document's reference: {r['rougeL_f_chance']:.1f}"
                   if r.get("rougeL_f_chance") is not None else "") + ")")
        lines.append(text + (f"; {_fact_text(r)}" if "fact_recall" in r else ""))
    if t.get("stopped_early_at"):
        lines.append(f"stopped early at step {t['stopped_early_at']} (validation loss stopped improving)")
    lines.append(f"training: {t['steps']} steps in {t['train_seconds']:.0f}s, final loss {t['final_loss']:.4f}")
    tp = metrics.get("throughput") or {}
    if "tokens_per_s" in tp:
        lines.append(f"throughput: {tp['tokens_per_s']:,.0f} tokens/s"
                     + (f", MFU {pct(tp['mfu'])}" if "mfu" in tp else "")
                     + (f" of {tp['peak_tflops']:.3g} TFLOP/s peak" if "peak_tflops" in tp else ""))
    return lines


def _versus_unigram(ppl: float, unigram: float) -> str:
    """How the model's perplexity compares with the unigram's, in the direction it lies (early in pretraining, or
    with a model that learned nothing, it is higher)."""
    if ppl < unigram:
        return f"{unigram / ppl:.1f}x lower"
    if ppl > unigram:
        return f"{ppl / unigram:.1f}x higher: not yet better than token frequencies"
    return "the same"


def _fact_text(r: dict) -> str:
    chance = r.get("fact_recall_chance")
    return (f"fact recall {pct(r['fact_recall'])} ({r['facts_recalled']}/{r['facts']} facts of "
            f"{r['articles_with_facts']} articles" + (f"; chance {pct(chance)}" if chance is not None else "") + ")")


def report_sections(recipe: Recipe, metrics: dict, run_dir: Path) -> list[str]:
    best = metrics.get("best_checkpoint")
    lines = []
    results = best_results(metrics)
    ppl = results_with(results, "unigram_perplexity")
    if ppl:
        lines += [f"## Perplexity ({best})", "",
                  "A unigram model (training-split token frequencies, add-one smoothed) priced on exactly the "
                  "positions the model was scored on: the model must beat it by using context.", "",
                  "| task | split | blocks | tokens | perplexity | unigram perplexity | NLL/token | "
                  "unigram NLL/token |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, r in ppl.items():
            lines.append(f"| {label} | {r.get('split', '–')} | {r.get('blocks', r['n']):,} | {r['tokens']:,} | "
                         f"{r['perplexity']:.2f} | {r['unigram_perplexity']:.2f} | {r['nll_per_token']:.4f} | "
                         f"{r['unigram_nll_per_token']:.4f} |")
        lines.append("")
    for label, r in results_with(results, "samples").items():
        lines += [f"## Continuations: {label} ({best})", "",
                  f"Rouge-L F {r['rougeL_f']:.1f} (P {r['rougeL_p']:.1f}, R {r['rougeL_r']:.1f}; "
                  f"segmentation {r['segmentation']}) over {r['n']} documents"
                  + (f" (against another document's reference: {r['rougeL_f_chance']:.1f})"
                     if r.get("rougeL_f_chance") is not None else "")
                  + (f"; {_fact_text(r)}" if "fact_recall" in r else "") + ". The prompt is the document's first "
                  f"sentence, the reference the next {r.get('reference_chars', '')} characters; greedy decoding.",
                  "", "| prompt | model | reference |", "|---|---|---|"]
        for sample in r["samples"]:
            lines.append(f"| {table_cell(sample['prompt'])} | {table_cell(sample['continuation'])} | "
                         f"{table_cell(sample['reference'])} |")
        lines.append("")
    checkpoints = metrics.get("checkpoints") or {}
    val_loss = metrics.get("val_loss") or {}
    if checkpoints or val_loss:
        labels = list(next(iter(checkpoints.values()))) if checkpoints else []
        lines += checkpoint_table(["validation loss"], labels, [
            ([best_title(name, best), number(val_loss.get(name), ".4f")],
             [task_cell(checkpoints.get(name, {}).get(label)) for label in labels])
            for name in dict.fromkeys([*val_loss, *checkpoints])])
    lines += ["## Training", "", "![loss curves: training and validation](loss.png)", ""]
    tp = metrics.get("throughput") or {}
    if tp.get("tokens_per_s") is not None:
        lines += ["| tokens/s | MFU | peak TFLOP/s | FLOPs/token |", "|---|---|---|---|",
                  f"| {number(tp.get('tokens_per_s'), ',.0f')} | {pct(tp['mfu']) if 'mfu' in tp else '–'} | "
                  f"{number(tp.get('peak_tflops'), '.3g')} | {number(tp.get('flops_per_token'), ',.0f')} |", "",
                  "Medians over the logged windows after the first (start-up); MFU = FLOPs/token × tokens/s ÷ peak.",
                  ""]
    lines += ["Recipe: `recipe.yaml` in this directory. Per-step log (train and validation lines): `metrics.jsonl`; "
              "all numbers: `metrics.json`.", ""]
    return lines


def task_cell(r: dict | None) -> str:
    """A task's cell in a pretrained model's row: perplexity next to the unigram's, Rouge-L and fact recall of
    continuations, else the task's headline (`checkpoint_cell`)."""
    if not r:
        return "–"
    if "unigram_perplexity" in r:
        return f"ppl {r['perplexity']:.2f} (unigram {r['unigram_perplexity']:.2f})"
    if "samples" in r:
        return f"Rouge-L {r['rougeL_f']:.1f}" + (f", facts {pct(r['fact_recall'])}" if "fact_recall" in r else "")
    return checkpoint_cell(r)


KIND = RunKind(owns_recipe=lambda recipe, base_run: bool(recipe.data.corpus),
               owns_metrics=lambda metrics: bool(metrics.get("pretraining")),
               measure=measure, summary_lines=summary_lines, report_sections=report_sections)
