"""A competition run (every run that is neither pretraining nor a course fine-tuning): the base and the
checkpoints on the eval tasks, the best checkpoint by the accuracy task's primary metric (`tunelab.runs`), its
accuracy gain over the base, retention of the abilities (`tunelab.eval.retention`), the low-parameter ratio and
the competition score (`tunelab.scoring`), a per-checkpoint plot, and a report that shows why answers pass or
fail."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.pipeline.evaluation import evaluate_checkpoints
from tunelab.pipeline.run_kind import RunKind, TrainedRun
from tunelab.recipe import Recipe
from tunelab.report import best_title, checkpoint_cell, checkpoint_table, pct
from tunelab.runs import best_label, best_results, list_checkpoints


def measure(run: TrainedRun) -> dict:
    from tunelab.eval.retention import overall, retention
    from tunelab.scoring import competition_score, low_param_ratio
    recipe, sets, summary = run.recipe, run.sets, run.summary
    ability = [t.label for t in recipe.eval.tasks if t.ability]
    acc_task = recipe.score.accuracy_task  # `check` saw it among the sets before training
    ckpts = list_checkpoints(recipe.run_dir)
    if recipe.eval.checkpoints == "last":
        ckpts = ckpts[-1:]
    base_results, per_ckpt = evaluate_checkpoints(recipe, sets, run.template, ckpts, run.models, base_label="base")

    metrics: dict = {"name": recipe.name, "train": summary}
    if per_ckpt:
        primary = sets[acc_task].task.primary_metric
        kept_from, by_ckpt = base_results, {}
        if base_results:
            origin = original_base(recipe)
            if origin and ability:  # a continued run keeps the ORIGINAL base's abilities, not its start's
                metrics["original_base"] = original_base_results(recipe, sets, ability, origin, run)
                kept_from = metrics["original_base"]
            by_ckpt = {name: retention(kept_from, res, ability, recipe.eval.retention_threshold,
                                       recipe.eval.retention_min_base) for name, res in per_ckpt.items()}
        best, best_by = best_kept(per_ckpt, acc_task, sets[acc_task].task, by_ckpt)
        metrics.update({"base": base_results, "checkpoints": per_ckpt, "best_checkpoint": best, "best_by": best_by})
        accuracy = per_ckpt[best][acc_task][primary]
        total = recipe.score.total_params or summary["total_params"]
        ratio = low_param_ratio(summary["trainable_params"], total)
        metrics["ratio"] = {"trainable": summary["trainable_params"], "total": total, "ratio": ratio}
        metrics["score"] = {"formula": recipe.score.formula, "accuracy": accuracy,
                            "value": competition_score(recipe.score.formula, accuracy, ratio)}
        # the score each checkpoint would get: a dashboard's (and a search's) score against step
        metrics["checkpoint_scores"] = {name: competition_score(recipe.score.formula, r[acc_task][primary], ratio)
                                        for name, r in per_ckpt.items()}
        if base_results:
            metrics["accuracy_gain"] = accuracy - base_results[acc_task][primary]
            change = accuracy_change(recipe.run_dir / "eval", acc_task, best)
            if change:
                metrics["accuracy_change"] = change
            metrics["retention"] = by_ckpt[best]
            if ability:
                metrics["retention_by_checkpoint"] = {name: {"verdict": overall(r), "entries": r}
                                                      for name, r in by_ckpt.items()}
        if recipe.eval.scales:
            from tunelab.pipeline.scale_frontier import scale_frontier
            metrics["scale_frontier"] = scale_frontier(run, best, per_ckpt[best], kept_from, ability, ratio)
        plot_checkpoints(metrics, acc_task, primary, ability, recipe.run_dir / "checkpoints.png")
    return metrics


def accuracy_change(eval_dir: Path, task: str, best: str) -> dict | None:
    """The best checkpoint's accuracy minus the base's on the same items, paired (`metrics.intervals`): the change,
    its 95 % interval and McNemar's p, from the two evaluations' graded answers; None when they are not both there
    or do not hold the same items."""
    from tunelab.metrics.intervals import paired_change
    from tunelab.records import iter_records
    files = [eval_dir / name / f"{task}.predictions.jsonl" for name in ("base", best)]
    if not all(f.is_file() for f in files):
        return None
    base, tuned = ({r.get("id", line): bool(r.get("correct")) for line, r in iter_records(f)} for f in files)
    if not base or set(base) != set(tuned):
        return None
    ids = sorted(base)
    c = paired_change([base[i] for i in ids], [tuned[i] for i in ids])
    return {"n": c.n, "gained": c.gained, "lost": c.lost, "change": c.change, "interval": [c.low, c.high],
            "p_value": c.p_value}


def best_kept(per_ckpt: dict, acc_task: str, task, by_ckpt: dict) -> tuple[str, str]:
    """(the best checkpoint, by what): the best on the accuracy task among the checkpoints whose retention verdict
    is not FAIL — a gain that cost the base's abilities is never the run's result while one that kept them
    exists — else the best of all, said so. The sweep reads the chosen checkpoint's verdict, so both agree."""
    from tunelab.eval.retention import overall
    by = f"{acc_task}.{task.primary_metric}"
    kept = [name for name in per_ckpt if overall(by_ckpt.get(name, {})) != "FAIL"]
    if not by_ckpt or len(kept) == len(per_ckpt):
        return best_label(per_ckpt, acc_task, task), by
    if not kept:
        return best_label(per_ckpt, acc_task, task), f"{by} (no checkpoint keeps the abilities)"
    return best_label({n: per_ckpt[n] for n in kept}, acc_task, task), f"{by} among checkpoints whose retention passes"


def check(recipe: Recipe, sets: dict) -> None:
    """The score's accuracy task is an evaluated task whose primary metric is an accuracy, a fraction in 0-1 as
    the competition's formula takes it (F1 and Rouge-L F are 0-100 here)."""
    acc_task = recipe.score.accuracy_task
    if not sets:
        return
    if acc_task not in sets:
        raise TunelabError(f"score.accuracy_task '{acc_task}' is not among the eval tasks ({', '.join(sets)})",
                           field="score.accuracy_task")
    task = sets[acc_task].task
    if task.primary_metric != "accuracy":
        raise TunelabError(f"score.accuracy_task '{acc_task}' is a {task.name} task, measured by "
                           f"{task.primary_metric} on 0-100; the competition score takes an accuracy in 0-1: name "
                           "an arithmetic, choice or GLUE task", field="score.accuracy_task")


def original_base(recipe) -> str | None:
    """The model a continued LoRA run's adapter was first trained on (`model.path: runs/quickstart` → the
    quickstart's base), when it is not `model.path` itself; None for any other run."""
    from tunelab.train.setup import continued_adapter
    continued = continued_adapter(recipe)
    return continued[1] if continued else None


def original_base_results(recipe, sets: dict, ability: list[str], origin: str, run: TrainedRun) -> dict:
    """The original base's results on the ability tasks, kept in eval/original-base like every evaluation."""
    from tunelab.pipeline.evaluation import cached_eval
    return cached_eval(origin, {k: sets[k] for k in ability}, recipe.run_dir / "eval" / "original-base", recipe,
                       run.template, "original base", run.models)


def summary_lines(metrics: dict) -> list[str]:
    lines = []
    if "score" in metrics:
        s, r = metrics["score"], metrics["ratio"]
        base_acc = metrics.get("base", {}) or {}
        lines.append(f"best checkpoint: {metrics['best_checkpoint']}  accuracy {pct(s['accuracy'])}"
                     + (f" (base {pct(s['accuracy'] - metrics['accuracy_gain'])}, "
                        f"gain {100 * metrics['accuracy_gain']:+.1f} points)" if base_acc else ""))
        change = metrics.get("accuracy_change")
        if change:
            low, high = (100 * x for x in change["interval"])
            lines.append(f"  the same {change['n']} items, paired: {change['gained']} right only after, "
                         f"{change['lost']} only before; 95 % interval {low:+.1f} to {high:+.1f} points, "
                         f"McNemar p {change['p_value']:.2g}")
        what = ("full fine-tuning: every parameter trains" if r["trainable"] >= r["total"]
                else f"{r['trainable']:,} / {r['total']:,.0f}")
        lines.append(f"low-parameter ratio {r['ratio']:.9g} ({what}); {s['formula']} score {s['value']:.4f}")
        of = "original base" if metrics.get("original_base") else "base"
        from tunelab.eval.retention import describe
        for key, v in (metrics.get("retention") or {}).items():
            lines.append(f"retention {describe(key, v, of)}")
    t = metrics["train"]
    lines.append(f"training: {t['steps']} steps in {t['train_seconds']:.0f}s, final loss {t['final_loss']:.4f}")
    return lines


def report_sections(recipe: Recipe, metrics: dict, run_dir: Path) -> list[str]:
    acc_task = recipe.score.accuracy_task
    lines = []
    if "checkpoints" in metrics:
        best = metrics["best_checkpoint"]
        base = (metrics.get("base") or {}).get(acc_task)
        tuned = best_results(metrics)[acc_task]
        lines += [f"## {acc_task}: why answers pass or fail (best checkpoint {best})", ""]
        lines += _diagnostics_table(tuned, base) + [""]
        if tuned.get("by_kind"):
            lines += ["| kind | n | base accuracy | tuned accuracy |", "|---|---|---|---|"]
            for kind, v in tuned["by_kind"].items():
                b = (base or {}).get("by_kind", {}).get(kind, {}).get("accuracy")
                lines.append(f"| {kind} | {v['n']} | {pct(b) if b is not None else '–'} | {pct(v['accuracy'])} |")
            lines.append("")
        labels = list(best_results(metrics))
        start = metrics.get("base") or {}  # where the run started: the same held-out sets before training
        kept = metrics.get("retention_by_checkpoint") or {}
        measures = ["retention"] if kept else []
        lines += checkpoint_table(measures, labels, ([(["base"] + ["–"] * len(measures),
                                                       [checkpoint_cell(start[k]) for k in labels])]
                                                     if all(k in start for k in labels) else []) + [
            ([best_title(name, best)] + ([retention_cell(kept[name])] if kept else []),
             [checkpoint_cell(res[k]) for k in labels])
            for name, res in metrics["checkpoints"].items()])
        if metrics.get("best_by"):
            lines += [f"Best checkpoint: by {metrics['best_by']}.", ""]
        lines += ["![accuracy and every retained ability per checkpoint](checkpoints.png)", ""]
        from tunelab.pipeline.scale_frontier import report_section
        lines += report_section(metrics)
    lines += ["## Training", "", "![loss curve](loss.png)", ""]
    for png, what in (("grpo.png", "GRPO: sampled reward, groups all alike, KL, entropy"),
                      ("rft.png", "rejection sampling: answers accepted, prompts solved, answers trained"),
                      ("rewards.png", "preference rewards and margins")):
        if (run_dir / png).exists():
            lines += [f"![{what}]({png})", ""]
    lines += [
              "Recipe: `recipe.yaml` in this directory. Per-step log: `metrics.jsonl`; all numbers: `metrics.json`.",
              ""]
    return lines


def retention_cell(kept: dict) -> str:
    """A checkpoint's retention verdict and its lowest retained share (the ability closest to failing)."""
    retained = [(e["retained"], key) for key, e in kept["entries"].items() if e.get("retained") is not None]
    if not retained:
        return kept["verdict"] or "–"
    low, key = min(retained)
    return f"{kept['verdict']} (lowest: {key} {100 * low:.0f}%)"


def _diagnostics_table(res: dict, base: dict | None) -> list[str]:
    keys = [k for k in ("accuracy", "format_ok", "sign_ok", "within_tol", "digit_acc") if k in res]
    lines = ["| metric | base | tuned |", "|---|---|---|"]
    for k in keys:
        b = pct(base[k]) if base and k in base else "–"
        lines.append(f"| {k} | {b} | {pct(res[k])} |")
    return lines


def plot_checkpoints(metrics: dict, acc_task: str, primary: str, ability: list[str], out_png: Path) -> None:
    """Task accuracy and every retained ability's metrics (0-100) per checkpoint, the base as dashed lines: the
    checkpoint with both in view."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.eval.retention import retained_by
    names = list(metrics["checkpoints"])
    steps = [int(n.split("-")[-1]) for n in names]
    first = metrics["checkpoints"][names[0]]
    series = [(acc_task, primary, 100.0)] + [(a, m, scale) for a in ability
                                             for m, scale in retained_by(first[a]).items()]
    base = metrics.get("original_base") or metrics.get("base") or {}
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, (task, metric, scale) in enumerate(series):
        color = f"C{i % 10}"
        ys = [metrics["checkpoints"][n][task][metric] * scale for n in names]
        ax.plot(steps, ys, marker="o", color=color, label=f"{task} {metric}", lw=2.2 if i == 0 else 1.4)
        if metric in base.get(task, {}):
            ax.axhline(base[task][metric] * scale, color=color, ls="--", alpha=0.6, lw=1)
    best = metrics.get("best_checkpoint")
    if best in names:
        ax.axvline(steps[names.index(best)], color="grey", ls=":", lw=1, label="best (retention kept)")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("score (0-100); dashed: the base")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("task accuracy and retained abilities per checkpoint")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


KIND = RunKind(owns_recipe=lambda recipe, base_run: True,  # every recipe no other kind claims: it is asked last
               owns_metrics=lambda metrics: True,
               measure=measure, summary_lines=summary_lines, report_sections=report_sections,
               check=check)
