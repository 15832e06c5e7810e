"""The run report: report.md and a per-checkpoint plot, both derived from metrics.json's content."""

from __future__ import annotations

from pathlib import Path

from tunelab.recipe import Recipe


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_lines(metrics: dict) -> list[str]:
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
