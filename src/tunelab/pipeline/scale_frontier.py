"""The adapter-scale frontier (`eval.scales`): the best checkpoint evaluated again with its LoRA update times each
scale s in (0, 1) — W + s·ΔW, weight-space interpolation toward the base as WiSE-FT does
(`tunelab.model.lora_scale`) — so the run shows what each bit of task accuracy costs the retained abilities, for
one evaluation a scale and no training.

Each scaled adapter is written to `<run>/scaled/<checkpoint>-x<s>/` and evaluated on every eval set through the
run's own cache (`eval/<checkpoint>-x<s>/results.json`: a resumed run skips it), and its retention judged as a
checkpoint's, against the base results the run judges by (the original base of a continued run). Scale 1 is the
checkpoint itself. The chosen scale is the most accurate one whose retention does not fail (on a tie the
smaller: as accurate, with less of the update), or None when every scale fails; `tunelab export --scale chosen`
and `tunelab handin --scale chosen` merge it.

metrics.json's `scale_frontier`: {checkpoint, accuracy_task, points: [{scale, accuracy, retention: {verdict,
entries}, score}, ...] in increasing scale, chosen}. The report shows the table and `frontier.png`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.pipeline.run_kind import TrainedRun
from tunelab.report import pct

log = logging.getLogger(__name__)

PLOT = "frontier.png"


def scaled_label(checkpoint: str, scale: float) -> str:
    """The name of a checkpoint at a scale, for its scaled adapter's and its evaluation's directories."""
    return f"{checkpoint}-x{scale:g}"


def scale_frontier(run: TrainedRun, checkpoint: str, results: dict, kept_from: dict | None, ability: list[str],
                   ratio: float) -> dict:
    """The frontier of `checkpoint` (whose results at scale 1 are `results`): every `eval.scales` point and
    scale 1, retention judged against `kept_from` (None: no base results, nothing judged), each point scored
    with the run's low-parameter `ratio`; the plot written beside metrics.json."""
    from tunelab.eval.retention import overall, retention
    from tunelab.model.base_record import ADAPTER_CONFIG
    from tunelab.model.lora_scale import scaled_adapter
    from tunelab.pipeline.evaluation import cached_eval
    from tunelab.runs import list_checkpoints, model_dir_of
    from tunelab.scoring import competition_score
    recipe = run.recipe
    acc_task = recipe.score.accuracy_task
    primary = run.sets[acc_task].task.primary_metric
    adapter = model_dir_of(next(c for c in list_checkpoints(recipe.run_dir) if c.name == checkpoint))
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise TunelabError(f"{checkpoint} holds no LoRA adapter to scale", file=adapter, field="eval.scales")
    points = []
    for scale in [*recipe.eval.scales, 1.0]:
        res = results
        if scale < 1:
            label = scaled_label(checkpoint, scale)
            scaled = recipe.run_dir / "scaled" / label
            if not (scaled / ADAPTER_CONFIG).is_file():  # built whole or not at all (`scaled_adapter`)
                scaled_adapter(adapter, scale, scaled)
            log.info(f"adapter scale frontier: {label}")
            res = cached_eval(scaled, run.sets, recipe.run_dir / "eval" / label, recipe, run.template, label,
                              run.models)
        kept = (retention(kept_from, res, ability, recipe.eval.retention_threshold, recipe.eval.retention_min_base)
                if kept_from and ability else {})
        accuracy = res[acc_task][primary]
        points.append({"scale": scale, "accuracy": accuracy, "retention": {"verdict": overall(kept), "entries": kept},
                       "score": competition_score(recipe.score.formula, accuracy, ratio)})
    frontier = {"checkpoint": checkpoint, "accuracy_task": f"{acc_task}.{primary}", "points": points,
                "chosen": chosen_scale(points)}
    plot_frontier(frontier, recipe.eval.retention_threshold, recipe.run_dir / PLOT)
    return frontier


def chosen_scale(points: list[dict]) -> float | None:
    """The most accurate scale whose retention does not fail, the smaller on a tie; None when all fail."""
    kept = [p for p in points if p["retention"]["verdict"] != "FAIL"]
    return max(kept, key=lambda p: (p["accuracy"], -p["scale"]))["scale"] if kept else None


def ability_keys(frontier: dict, judged: bool = False) -> list[str]:
    """The ability metrics (`reading.f1`) of the frontier's retention, in the order first met; `judged`: only
    those retained by some share (a base too close to zero judges none)."""
    keys = [key for p in frontier["points"] for key, e in p["retention"]["entries"].items()
            if not judged or e.get("retained") is not None]
    return list(dict.fromkeys(keys))


CLIP = 160.0  # % of the base's: shares above it are drawn at it, labelled with their value


def plot_frontier(frontier: dict, threshold: float, out_png: Path) -> None:
    """Task accuracy (x) against each judged ability metric as a percentage of the base's (y), one line per
    metric, every point labelled with its scale, the retention threshold as a horizontal line. Nothing is
    written (and an old plot is removed) when no ability could be judged: there is no frontier to draw."""
    keys = ability_keys(frontier, judged=True)
    if not keys:
        out_png.unlink(missing_ok=True)
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, key in enumerate(keys):
        shown = [(100 * p["accuracy"], 100 * p["retention"]["entries"][key]["retained"], p["scale"])
                 for p in frontier["points"] if (p["retention"]["entries"].get(key) or {}).get("retained") is not None]
        # a share far above the base's (reading replayed in the task's format: 270-440 %) is drawn at the top, its
        # value written beside it, so the lines near the threshold keep the height of the plot
        drawn = [min(y, CLIP) for _, y, _ in shown]
        ax.plot([x for x, _, _ in shown], drawn, marker="o", color=f"C{i % 10}", label=key)
        for (x, y, scale), at in zip(shown, drawn):
            chosen = " (chosen)" if scale == frontier["chosen"] else ""
            above = f" ▲{y:.0f}%" if y > CLIP else ""
            lift = -10 * (i % 4) if above else 0  # clipped lines share the top: their labels step down
            ax.annotate(f"x{scale:g}{chosen}{above}", (x, at), textcoords="offset points", xytext=(4, 4 + lift),
                        fontsize=7)
    ax.axhline(100 * threshold, color="grey", ls="--", lw=1, label=f"retention threshold {100 * threshold:g}%")
    ax.set_xlabel(f"{frontier['accuracy_task']} (%)")
    ax.set_ylabel("ability retained (% of the base's)")
    ax.grid(alpha=0.3)
    ax.set_ylim(top=CLIP + 10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"adapter scale frontier of {frontier['checkpoint']}")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def report_section(metrics: dict) -> list[str]:
    """The report's frontier section: a row per scale (accuracy, each ability retained, verdict, score), the
    plot, and the chosen scale with the commands that take it. Nothing for a run without a frontier."""
    frontier = metrics.get("scale_frontier")
    if not frontier:
        return []
    keys = ability_keys(frontier)
    of = "original base" if metrics.get("original_base") else "base"
    lines = [f"## Adapter scale frontier ({frontier['checkpoint']})", "",
             f"The checkpoint's LoRA update times each scale (W + s·ΔW: toward the {of} as the scale falls), "
             "evaluated on every task; no training.", "",
             "| scale | " + " | ".join([frontier["accuracy_task"], *(f"{k} retained" for k in keys), "retention",
                                        "score"]) + " |",
             "|---|" + "---|" * (len(keys) + 3)]
    for p in frontier["points"]:
        entries = p["retention"]["entries"]
        kept = [pct(entries[k]["retained"]) if (entries.get(k) or {}).get("retained") is not None else "–"
                for k in keys]
        title = f"{p['scale']:g}" + (" (the checkpoint)" if p["scale"] == 1 else "") \
            + (" (chosen)" if p["scale"] == frontier["chosen"] else "")
        lines.append("| " + " | ".join([title, pct(p["accuracy"]), *kept, p["retention"]["verdict"] or "–",
                                        f"{p['score']:.4f}"]) + " |")
    lines.append("")
    if ability_keys(frontier, judged=True):
        lines += [f"![{frontier['accuracy_task']} against each retained ability, by adapter scale]({PLOT})", ""]
    else:
        lines += [f"No retained ability could be judged against the {of} (no ability task, no base results, or "
                  "a base too close to zero), so there is no frontier plot.", ""]
    chosen = frontier["chosen"]
    if chosen is None:
        lines += ["Chosen scale: none — retention fails at every scale.", ""]
    elif chosen == 1:
        lines += ["Chosen scale: 1, the checkpoint as trained (no smaller scale is as accurate with its retention "
                  "kept); `tunelab export` and `tunelab handin` merge it without `--scale`.", ""]
    else:
        lines += [f"Chosen scale: **{chosen:g}**, the most accurate whose retention does not fail. "
                  "`tunelab export RUN OUT --scale chosen` and `tunelab handin RUN --out DIR --scale chosen` merge "
                  "the checkpoint at it.", ""]
    return lines
