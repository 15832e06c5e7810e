"""The run report: report.md and a per-checkpoint plot, both derived from metrics.json's content.

A fine-tuning run on a pretraining run (metrics["course"], the MiniGPT course path) gets the course report:
pretrained vs fine-tuned on validation perplexity, held-out Rouge-L, exact answers and stop rate, the loss
curves, every checkpoint and sample answers of both (`course_report`).

A pretraining run's report (metrics["pretraining"]) shows instead: the best checkpoint by validation loss,
validation perplexity next to a unigram model's on the same positions (`ppl` on a corpus), Rouge-L and fact
recall of continuations with a table of samples (`continuation`), every checkpoint's validation loss and
task metrics, the loss curves (loss.png: train and validation) and the throughput (tokens/s, MFU)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tunelab.recipe import Recipe


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_lines(metrics: dict) -> list[str]:
    if metrics.get("pretraining"):
        return pretraining_summary_lines(metrics)
    if metrics.get("course"):
        return course_summary_lines(metrics)
    lines = []
    if "score" in metrics:
        s, r = metrics["score"], metrics["ratio"]
        base_acc = metrics.get("base", {}) or {}
        lines.append(f"best checkpoint: {metrics['best_checkpoint']}  accuracy {_pct(s['accuracy'])}"
                     + (f" (base {_pct(s['accuracy'] - metrics['accuracy_gain'])}, "
                        f"gain {100 * metrics['accuracy_gain']:+.1f} points)" if base_acc else ""))
        what = ("full fine-tuning: every parameter trains" if r["trainable"] >= r["total"]
                else f"{r['trainable']:,} / {r['total']:,.0f}")
        lines.append(f"low-parameter ratio {r['ratio']:.9g} ({what}); {s['formula']} score {s['value']:.4f}")
        for key, v in (metrics.get("retention") or {}).items():
            scorer = f" ({v['scorer']} scorer)" if v.get("scorer") else ""
            lines.append(f"retention {key}{scorer}: {_pct(v['retained'])} ({v['tuned']:.2f} vs base "
                         f"{v['base']:.2f}) {'PASS' if v['pass'] else 'FAIL'}")
    t = metrics["train"]
    lines.append(f"training: {t['steps']} steps in {t['train_seconds']:.0f}s, final loss {t['final_loss']:.4f}")
    return lines


def plot_checkpoints(metrics: dict, acc_task: str, primary: str, ability: list[str], out_png: Path) -> None:
    """Task accuracy and ability F1 per checkpoint, with the base model as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(metrics["checkpoints"])
    steps = [int(n.split("-")[-1]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    series = [(acc_task, primary, 100.0)] + [(a, "f1", 1.0) for a in ability]
    for i, (task, metric, scale) in enumerate(series):
        color = f"C{i}"
        ys = [metrics["checkpoints"][n][task][metric] * scale for n in names]
        ax.plot(steps, ys, marker="o", color=color, label=f"{task} {metric}")
        if metrics.get("base"):
            ax.axhline(metrics["base"][task][metric] * scale, color=color, ls="--", alpha=0.6,
                       label=f"{task} {metric} (base)")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("evaluation per checkpoint")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def _diagnostics_table(res: dict, base: dict | None) -> list[str]:
    keys = [k for k in ("accuracy", "format_ok", "sign_ok", "within_tol", "digit_acc") if k in res]
    lines = ["| metric | base | tuned |", "|---|---|---|"]
    for k in keys:
        b = _pct(base[k]) if base and k in base else "–"
        lines.append(f"| {k} | {b} | {_pct(res[k])} |")
    return lines


def checkpoint_cell(r: dict) -> str:
    """One task's headline in the per-checkpoint table."""
    if "accuracy" in r and r["accuracy"] <= 1:
        return _pct(r["accuracy"])
    if "f1" in r and "exact_match" in r:
        return f"F1 {r['f1']:.1f} / EM {r['exact_match']:.1f}" + (f" ({r['scorer']})" if r.get("scorer") else "")
    metric = r.get("primary_metric")
    if metric in r:
        return f"{metric} {r[metric]:.2f}"
    return "–"


def write_report(recipe: Recipe, metrics: dict, out: Path) -> None:
    acc_task = recipe.score.accuracy_task
    lines = [f"# Run report: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    if metrics.get("pretraining"):
        out.write_text("\n".join(lines + pretraining_report(metrics)), encoding="utf-8")
        return
    if metrics.get("course"):
        out.write_text("\n".join(lines + course_report(metrics, out.parent)), encoding="utf-8")
        return
    lines += ["## Summary", ""] + [f"- {x}" for x in summary_lines(metrics)] + [""]
    if "checkpoints" in metrics:
        best = metrics["best_checkpoint"]
        base = (metrics.get("base") or {}).get(acc_task)
        tuned = metrics["checkpoints"][best][acc_task]
        lines += [f"## {acc_task}: why answers pass or fail (best checkpoint {best})", ""]
        lines += _diagnostics_table(tuned, base) + [""]
        if tuned.get("by_kind"):
            lines += ["| kind | n | base accuracy | tuned accuracy |", "|---|---|---|---|"]
            for kind, v in tuned["by_kind"].items():
                b = (base or {}).get("by_kind", {}).get(kind, {}).get("accuracy")
                lines.append(f"| {kind} | {v['n']} | {_pct(b) if b is not None else '–'} | {_pct(v['accuracy'])} |")
            lines.append("")
        lines += ["## Every checkpoint", "", "| checkpoint | " + " | ".join(
            f"{t}" for t in metrics["checkpoints"][best]) + " |",
            "|---|" + "---|" * len(metrics["checkpoints"][best])]
        for name, res in metrics["checkpoints"].items():
            cells = []
            for task, r in res.items():
                cells.append(checkpoint_cell(r))
            lines.append(f"| {name}{' (best)' if name == best else ''} | " + " | ".join(cells) + " |")
        lines += ["", "![accuracy per checkpoint](checkpoints.png)", ""]
    lines += ["## Training", "", "![loss curve](loss.png)", "",
              "Recipe: `recipe.yaml` in this directory. Per-step log: `metrics.jsonl`; all numbers: `metrics.json`.",
              ""]
    out.write_text("\n".join(lines), encoding="utf-8")


# --- pretraining runs ------------------------------------------------------------------------------

def _best_results(metrics: dict) -> dict:
    return (metrics.get("checkpoints") or {}).get(metrics.get("best_checkpoint"), {})


def _of_kind(results: dict, key: str) -> dict[str, dict]:
    """The task results (by label) that carry `key`: unigram_perplexity -> ppl on a corpus, samples ->
    continuation."""
    return {label: r for label, r in results.items() if isinstance(r, dict) and key in r}


def _fact_text(r: dict) -> str:
    chance = r.get("fact_recall_chance")
    return (f"fact recall {_pct(r['fact_recall'])} ({r['facts_recalled']}/{r['facts']} facts of "
            f"{r['articles_with_facts']} articles" + (f"; chance {_pct(chance)}" if chance is not None else "") + ")")


def pretraining_summary_lines(metrics: dict) -> list[str]:
    lines = []
    best, t = metrics.get("best_checkpoint"), metrics["train"]
    if best:
        how = {"val_loss": "lowest validation loss", "last": "the last; no validation loss"}.get(
            metrics.get("best_by"), metrics.get("best_by"))
        val = metrics.get("best_val_loss")
        lines.append(f"best checkpoint: {best} ({how}" + (f": {val:.4f}, perplexity {math.exp(min(val, 700)):.2f}"
                                                          if isinstance(val, (int, float)) else "") + ")")
    results = _best_results(metrics)
    for label, r in _of_kind(results, "unigram_perplexity").items():
        ppl, unigram = r["perplexity"], r["unigram_perplexity"]
        lines.append(f"{label}: validation perplexity {ppl:.2f} vs unigram {unigram:.2f} on the same {r['tokens']:,} "
                     f"tokens ({_versus_unigram(ppl, unigram)})")
    for label, r in _of_kind(results, "samples").items():
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
                     + (f", MFU {_pct(tp['mfu'])}" if "mfu" in tp else "")
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


def _md(text: str, limit: int = 160) -> str:
    """A table cell: newlines shown as ⏎, pipes escaped, long text cut."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ") or "–"


def pretraining_report(metrics: dict) -> list[str]:
    best = metrics.get("best_checkpoint")
    lines = ["## Summary", ""] + [f"- {x}" for x in pretraining_summary_lines(metrics)] + [""]
    results = _best_results(metrics)
    ppl = _of_kind(results, "unigram_perplexity")
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
    for label, r in _of_kind(results, "samples").items():
        lines += [f"## Continuations: {label} ({best})", "",
                  f"Rouge-L F {r['rougeL_f']:.1f} (P {r['rougeL_p']:.1f}, R {r['rougeL_r']:.1f}; "
                  f"segmentation {r['segmentation']}) over {r['n']} documents"
                  + (f" (against another document's reference: {r['rougeL_f_chance']:.1f})"
                     if r.get("rougeL_f_chance") is not None else "")
                  + (f"; {_fact_text(r)}" if "fact_recall" in r else "") + ". The prompt is the document's first "
                  f"sentence, the reference the next {r.get('reference_chars', '')} characters; greedy decoding.",
                  "", "| prompt | model | reference |", "|---|---|---|"]
        for sample in r["samples"]:
            lines.append(f"| {_md(sample['prompt'])} | {_md(sample['continuation'])} | {_md(sample['reference'])} |")
        lines.append("")
    checkpoints = metrics.get("checkpoints") or {}
    val_loss = metrics.get("val_loss") or {}
    if checkpoints or val_loss:
        labels = list(next(iter(checkpoints.values()))) if checkpoints else []
        lines += ["## Every checkpoint", "", "| checkpoint | validation loss | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for name in dict.fromkeys([*val_loss, *checkpoints]):
            v = val_loss.get(name)
            cells = [_pretraining_cell(checkpoints.get(name, {}).get(label)) for label in labels]
            lines.append(f"| {name}{' (best)' if name == best else ''} | "
                         f"{f'{v:.4f}' if isinstance(v, (int, float)) else '–'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training", "", "![loss curves: training and validation](loss.png)", ""]
    tp = metrics.get("throughput") or {}
    if tp.get("tokens_per_s") is not None:
        def num(key: str, fmt: str) -> str:
            return format(tp[key], fmt) if isinstance(tp.get(key), (int, float)) else "–"
        lines += ["| tokens/s | MFU | peak TFLOP/s | FLOPs/token |", "|---|---|---|---|",
                  f"| {num('tokens_per_s', ',.0f')} | {_pct(tp['mfu']) if 'mfu' in tp else '–'} | "
                  f"{num('peak_tflops', '.3g')} | {num('flops_per_token', ',.0f')} |", "",
                  "Medians over the logged windows after the first (start-up); MFU = FLOPs/token × tokens/s ÷ peak.",
                  ""]
    lines += ["Recipe: `recipe.yaml` in this directory. Per-step log (train and validation lines): `metrics.jsonl`; "
              "all numbers: `metrics.json`.", ""]
    return lines


def _pretraining_cell(r: dict | None) -> str:
    if not r:
        return "–"
    if "unigram_perplexity" in r:
        return f"ppl {r['perplexity']:.2f} (unigram {r['unigram_perplexity']:.2f})"
    if "samples" in r:
        return f"Rouge-L {r['rougeL_f']:.1f}" + (f", facts {_pct(r['fact_recall'])}" if "fact_recall" in r else "")
    return checkpoint_cell(r)


# --- the course report: a fine-tuning run on a pretraining run ---------------------------------------------

def _num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def _rate(value) -> str:
    return _pct(value) if isinstance(value, (int, float)) else "–"


def _course_results(metrics: dict) -> tuple[dict, dict]:
    """(the pretrained model's results, the best fine-tuned checkpoint's), by task label."""
    return metrics.get("base") or {}, _best_results(metrics)


def _qa_labels(results: dict) -> list[str]:
    return [label for label, r in results.items() if isinstance(r, dict) and "stop_rate" in r]


def course_summary_lines(metrics: dict) -> list[str]:
    base, tuned = _course_results(metrics)
    pre = metrics.get("base_pretraining") or {}
    lines = [f"pretrained: {metrics['base_run']} ({pre.get('best_checkpoint') or metrics['base_model']}); "
             f"fine-tuned: {metrics.get('best_checkpoint')} (best by {metrics.get('best_by')}), "
             f"template {metrics.get('template')}"]
    for label, r in _of_kind(tuned, "unigram_perplexity").items():
        b = base.get(label, {})
        lines.append(f"{label}: validation perplexity {_num(b.get('perplexity'), '.2f')} pretrained -> "
                     f"{r['perplexity']:.2f} fine-tuned (unigram {r['unigram_perplexity']:.2f})")
    for label in _qa_labels(tuned):
        r, b = tuned[label], base.get(label, {})
        lines.append(f"{label}: Rouge-L F {_num(b.get('rougeL_f'), '.1f')} -> {r['rougeL_f']:.1f} over {r['n']} "
                     f"held-out pairs ({r['segmentation']}); exact {_rate(b.get('exact'))} -> {_rate(r['exact'])}; "
                     f"stop rate {_rate(b.get('stop_rate'))} -> {_rate(r['stop_rate'])}; answer length "
                     f"{_num(b.get('answer_chars'), '.1f')} -> {r['answer_chars']:.1f} characters")
    losses = metrics.get("qa_loss") or {}
    best = metrics.get("best_checkpoint")
    if "base" in losses and best in losses:
        lines.append(f"held-out answer loss (answer + EOT after question + separator): {losses['base']['loss']:.3f} "
                     f"pretrained -> {losses[best]['loss']:.3f} fine-tuned")
    t = metrics["train"]
    lines.append(f"fine-tuning: {t['steps']} steps in {t['train_seconds']:.0f}s on {t['samples']:,} pairs, final loss "
                 f"{t['final_loss']:.4f}")
    return lines


def _answer_cell(sample: dict | None) -> str:
    if not sample:
        return "–"
    return _md(sample["answer"], 120) + (" ■" if sample.get("finish_reason") == "stop" else " …")


def course_report(metrics: dict, run_dir: Path) -> list[str]:
    base, tuned = _course_results(metrics)
    best = metrics.get("best_checkpoint")
    lines = ["## Summary", ""] + [f"- {x}" for x in course_summary_lines(metrics)] + [""]
    lines += [f"## Pretrained vs fine-tuned ({best})", "",
              "Each model with its own template: the pretrained one continues the question as text (template "
              f"`none`), the fine-tuned one answers after the separator (template `{metrics.get('template')}`).", "",
              "| task | measure | pretrained | fine-tuned |", "|---|---|---|---|"]
    for label, r in _of_kind(tuned, "unigram_perplexity").items():
        b = base.get(label, {})
        lines.append(f"| {label} | perplexity on the corpus's {r.get('split', 'val')} split ({r['tokens']:,} tokens; "
                     f"unigram {r['unigram_perplexity']:.2f}) | {_num(b.get('perplexity'), '.2f')} | "
                     f"{r['perplexity']:.2f} |")
    for label in _qa_labels(tuned):
        r, b = tuned[label], base.get(label, {})
        lines += [f"| {label} | Rouge-L F ({r['n']} held-out pairs, {r['segmentation']}) | "
                  f"{_num(b.get('rougeL_f'), '.1f')} | {r['rougeL_f']:.1f} |",
                  f"| {label} | exact answers (Rouge-L F = 1) | {_rate(b.get('exact'))} | {_rate(r['exact'])} |",
                  f"| {label} | stop rate (ended by a stop token before max_new_tokens) | "
                  f"{_rate(b.get('stop_rate'))} | {_rate(r['stop_rate'])} |",
                  f"| {label} | mean answer length (characters) | {_num(b.get('answer_chars'), '.1f')} | "
                  f"{r['answer_chars']:.1f} |"]
    losses = metrics.get("qa_loss") or {}
    if "base" in losses and best in losses:
        lines.append(f"| {metrics.get('qa_task')} | answer loss per token (answer + EOT, {losses[best]['pairs']} "
                     f"pairs) | {losses['base']['loss']:.3f} | {losses[best]['loss']:.3f} |")
    lines.append("")
    lines += ["## Loss curves", "", "![fine-tuning loss and held-out answer loss](course.png)", "",
              "Training loss: answer and EOT tokens of the training pairs (per logged window). Validation: the same "
              "loss on the held-out pairs at step 0 (the pretrained model, asked with the separator it never saw) "
              "and at every checkpoint; the best checkpoint is the lowest."]
    pre_png = Path(metrics["base_run"]) / "loss.png"
    if pre_png.is_file():
        rel = Path(os.path.relpath(pre_png.resolve(), Path(run_dir).resolve())).as_posix()
        lines += ["", f"Pretraining ({metrics['base_run']}): ![pretraining loss: training and validation]({rel})"]
    lines.append("")
    checkpoints = metrics.get("checkpoints") or {}
    names = list(dict.fromkeys([n for n in losses if n != "base"] + list(checkpoints)))
    labels = list(next(iter(checkpoints.values()))) if checkpoints else []
    if names:
        lines += ["## Every checkpoint", "", "| checkpoint | held-out answer loss | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for name in ["base", *names]:
            res = base if name == "base" else checkpoints.get(name, {})
            loss = (losses.get(name) or {}).get("loss")
            title = "pretrained (step 0)" if name == "base" else name + (" (best)" if name == best else "")
            cells = [_course_cell(res.get(label)) for label in labels]
            lines.append(f"| {title} | {_num(loss, '.4f')} | " + " | ".join(cells) + " |")
        lines.append("")
    for label in _qa_labels(tuned):
        before = {s["id"]: s for s in (base.get(label) or {}).get("samples", [])}
        lines += [f"## Sample answers: {label}", "",
                  "■ the answer ended by itself (a stop token); … it was cut at max_new_tokens.", "",
                  "| question | reference | pretrained | fine-tuned |", "|---|---|---|---|"]
        for sample in tuned[label].get("samples", []):
            lines.append(f"| {_md(sample['question'])} | {_md(sample['reference'])} | "
                         f"{_answer_cell(before.get(sample['id']))} | {_answer_cell(sample)} |")
        lines.append("")
    lines += ["## Chat with both", "", "```bash",
              f"tunelab ui --model sft={run_dir} --model pretrained={metrics['base_run']}", "```", "",
              "Side by side, the fine-tuned model answers with its template and stops at EOT; the pretrained one "
              "continues the text.", "",
              "Recipe: `recipe.yaml` in this directory. Per-step log: `metrics.jsonl`; all numbers: `metrics.json`; "
              "every answer: `eval/*/*.predictions.jsonl`.", ""]
    return lines


def _course_cell(r: dict | None) -> str:
    if not r:
        return "–"
    if "stop_rate" in r:
        return f"Rouge-L {r['rougeL_f']:.1f}, stop {_rate(r['stop_rate'])}"
    return _pretraining_cell(r)


def plot_course_curves(metrics_path: Path, qa_loss: dict, out_png: Path, title: str) -> Path | None:
    """The fine-tuning loss per logged window and the held-out answer loss at step 0 and every checkpoint."""
    from tunelab.train.plots import read_metrics
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows and not qa_loss:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if rows:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="training loss")
    points = sorted((v["step"], v["loss"]) for v in qa_loss.values())
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:green", marker="o", markersize=4,
                label="held-out answer loss (step 0: pretrained)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer/EOT token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: fine-tuning")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
