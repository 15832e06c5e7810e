"""The run report: report.md and a per-checkpoint plot, both derived from metrics.json's content.

A pretraining run's report (metrics["pretraining"]) shows instead: the best checkpoint by validation loss,
validation perplexity next to a unigram model's on the same positions (`ppl` on a corpus), Rouge-L and fact
recall of continuations with a table of samples (`continuation`), every checkpoint's validation loss and
task metrics, the loss curves (loss.png: train and validation) and the throughput (tokens/s, MFU)."""

from __future__ import annotations

import math
from pathlib import Path

from tunelab.recipe import Recipe


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_lines(metrics: dict) -> list[str]:
    if metrics.get("pretraining"):
        return pretraining_summary_lines(metrics)
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
            lines.append(f"retention {key}: {_pct(v['retained'])} ({v['tuned']:.2f} vs base {v['base']:.2f}) "
                         f"{'PASS' if v['pass'] else 'FAIL'}")
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


def _cell(r: dict) -> str:
    """One task's headline in the per-checkpoint table."""
    if "accuracy" in r and r["accuracy"] <= 1:
        return _pct(r["accuracy"])
    if "f1" in r and "exact_match" in r:
        return f"F1 {r['f1']:.1f} / EM {r['exact_match']:.1f}"
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
                cells.append(_cell(r))
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
        lines.append(f"{label}: validation perplexity {r['perplexity']:.2f} vs unigram {r['unigram_perplexity']:.2f}"
                     f" on the same {r['tokens']:,} tokens ({r['unigram_perplexity'] / r['perplexity']:.1f}x lower)")
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
    return _cell(r)
