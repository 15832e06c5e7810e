"""The sampled reward of a course stage trained by reward (GRPO on the SFT model): what its report says about
training, where an SFT stage shows its loss. A GRPO loss hovers near 0 whether or not the model improves, so the
report shows what the run was rewarded for: the mean reward of the sampled answers to the training prompts and
each reward term's mean, per logged window (`metrics.jsonl`, TRL's names), next to the held-out exact answers of
the base model (step 0) and of every evaluated checkpoint. The held-out answers are greedy; the sampled ones are
drawn at the run's temperature, so the two are different measures of different questions."""

from __future__ import annotations

from pathlib import Path

from tunelab.report import pct

TERM = "rewards/"


def sampled_rewards(metrics_path: Path) -> dict:
    """{first, last, windows}: the means over the first and the last quarter of the logged windows (one window
    at least; a window's reward is already a mean over its steps' samples, and one window of 16 prompts is noisy)
    of `reward`, `frac_reward_zero_std` and each term's mean (`rewards/<term>/mean`), with the steps they span
    (`from_step`, `step`), and how many windows were logged; {} when none logged a reward."""
    from tunelab.runs import read_metrics
    rows = [r for r in read_metrics(metrics_path) if "reward" in r]
    if not rows:
        return {}
    quarter = max(1, len(rows) // 4)

    def mean(start: int, stop: int) -> dict:  # windows start..stop-1; a window spans the steps since the last
        part = rows[start:stop]
        keys = [k for k in part[0] if k in ("reward", "frac_reward_zero_std")
                or (k.startswith(TERM) and k.endswith("/mean"))]
        return {"from_step": rows[start - 1]["step"] + 1 if start else 1, "step": part[-1]["step"],
                **{k: sum(r[k] for r in part) / len(part) for k in keys}}

    return {"first": mean(0, quarter), "last": mean(len(rows) - quarter, len(rows)), "windows": len(rows)}


def _terms(window: dict) -> dict[str, float]:
    return {k[len(TERM):-len("/mean")]: v for k, v in window.items() if k.startswith(TERM) and k.endswith("/mean")}


def reward_line(sampled: dict | None) -> str:
    """', sampled reward 0.280 (steps 1-50) -> 0.277 (steps 151-200) (rougel 0.184 -> 0.183; …)' ('' when
    none)."""
    if not sampled:
        return ""
    first, last = sampled["first"], sampled["last"]
    terms = "; ".join(f"{name} {v:.3f} -> {_terms(last).get(name, float('nan')):.3f}"
                      for name, v in _terms(first).items())
    return (f", sampled reward {first['reward']:.3f} (steps {first['from_step']}-{first['step']}) -> "
            f"{last['reward']:.3f} (steps {last['from_step']}-{last['step']})" + (f" ({terms})" if terms else ""))


def reward_section(metrics: dict) -> list[str]:
    """The report's section on training: the reward plot and the first and last windows in a table."""
    sampled = metrics.get("sampled_reward") or {}
    lines = ["## Sampled reward", "", "![sampled reward and held-out exact answers](course.png)", "",
             "The mean reward of the answers sampled to the training prompts, per logged window, and each reward "
             "term's mean; the points are the held-out questions' exact answers (greedy) of the base model (step 0) "
             "and of each evaluated checkpoint. The table: the means over the first and the last quarter of the "
             "logged windows.", ""]
    if sampled:
        first, last = sampled["first"], sampled["last"]
        names = list(_terms(first))
        lines += ["| logged windows, steps | reward | " + " | ".join(f"{n} (mean)" for n in names)
                  + " | groups all alike |", "|---|---|" + "---|" * len(names) + "---|"]
        for w in (first, last):
            lines.append(f"| {w['from_step']}-{w['step']} | {w['reward']:.3f} | "
                         + " | ".join(f"{_terms(w).get(n, float('nan')):.3f}" for n in names)
                         + f" | {pct(w.get('frac_reward_zero_std', float('nan')))} |")
        lines.append("")
    return lines


def plot_stage_rewards(metrics_path: Path, metrics: dict, out_png: Path, title: str) -> Path | None:
    """The sampled reward and each term's mean per logged window, and the held-out exact answers (greedy) of the
    base (step 0) and each evaluated checkpoint of the rougel task, on one 0..1 axis."""
    from tunelab.runs import read_metrics
    rows = [r for r in read_metrics(metrics_path) if "reward" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["reward"] for r in rows], color="tab:blue", label="sampled reward (training prompts)")
    for i, name in enumerate(_terms(rows[0])):
        ax.plot(steps, [r.get(f"{TERM}{name}/mean") for r in rows], color=f"C{i + 2}", lw=1, ls="--",
                label=f"{name} (mean)")
    label = metrics.get("qa_task")
    points = []
    if label and (metrics.get("base") or {}).get(label):
        points.append((0, metrics["base"][label]["exact"]))
    for name, results in (metrics.get("checkpoints") or {}).items():
        if label in results:
            points.append((int(name.split("-")[-1]), results[label]["exact"]))
    if points:
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], color="black", marker="o", markersize=4,
                label=f"held-out exact answers ({label}, greedy; step 0: base)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward / share of answers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: {metrics.get('method')}")
    from tunelab.train.plots import save_figure
    return save_figure(fig, out_png)
