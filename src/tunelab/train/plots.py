"""Plots derived from a run's metrics.jsonl (never the other way round)."""

from __future__ import annotations

from pathlib import Path

from tunelab.runs import read_metrics  # the one metrics.jsonl reader (and its rule)


def save_figure(fig, out_png: str | Path) -> Path:
    """Lay the figure out, write it as a PNG and free it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path, title: str = "training loss") -> Path | None:
    """Training loss, validation loss where measured, and the learning rate on a second axis, against step;
    returns the PNG path, or None if no data."""
    metrics = read_metrics(metrics_path)
    rows = [r for r in metrics if "loss" in r]
    val = [r for r in metrics if "val_loss" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="training loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], color="tab:green", marker="o",
                markersize=3, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per scored token)")
    losses = [r["loss"] for r in rows] + [r["val_loss"] for r in val]
    if all(x > 0 for x in losses):  # a GRPO or DPO loss can be zero or negative: log scale would drop those points
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    ax.set_title(title)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)  # inside the axes, under the title
    return save_figure(fig, out_png)


def plot_rewards(metrics_path: str | Path, out_png: str | Path, title: str = "preference rewards") -> Path | None:
    """A preference run's reward margin (and the chosen and rejected rewards) and its reward accuracy against
    step, as TRL names them (`rewards/margins`, `rewards/accuracies`), with the held-out pairs' as points; None
    when the run logged none."""
    rows = [r for r in read_metrics(metrics_path) if "rewards/margins" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    held_out = [r for r in read_metrics(metrics_path) if "val_rewards/margins" in r]  # data.val's pairs
    fig, (ax, acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for key, color in (("rewards/margins", "tab:blue"), ("rewards/chosen", "tab:green"),
                       ("rewards/rejected", "tab:red")):
        ax.plot(steps, [r[key] for r in rows], color=color, label=key)
    acc.plot(steps, [100 * r["rewards/accuracies"] for r in rows], color="tab:purple", label="training pairs")
    if held_out:
        ax.plot([r["step"] for r in held_out], [r["val_rewards/margins"] for r in held_out], color="tab:blue",
                marker="o", ls="--", label="held-out margins")
        acc.plot([r["step"] for r in held_out], [100 * r["val_rewards/accuracies"] for r in held_out],
                 color="tab:purple", marker="o", ls="--", label="held-out pairs")
        acc.legend(fontsize=8)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (β × log-ratio to the reference)")
    ax.set_title("rewards and their margin", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    acc.axhline(50, color="gray", lw=0.8, ls="--")
    acc.set_ylim(0, 100)
    acc.set_xlabel("optimizer step")
    acc.set_ylabel("reward accuracy (%)")
    acc.set_title("pairs whose chosen answer has the higher reward", fontsize=9)
    acc.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, out_png)


def plot_grpo(metrics_path: str | Path, out_png: str | Path, title: str = "GRPO") -> Path | None:
    """A GRPO run's sampled reward against step (the total, its std, and each reward term), the share of groups
    whose answers all scored alike (they teach nothing), and the KL to the reference, the entropy and the clipped
    share, as TRL names them; None when the run logged none."""
    rows = [r for r in read_metrics(metrics_path) if "reward" in r and "frac_reward_zero_std" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, (ax, kl) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    ax.plot(steps, [r["reward"] for r in rows], color="tab:blue", lw=2, label="reward (mean)")
    ax.plot(steps, [r.get("reward_std") for r in rows], color="tab:blue", lw=1, ls=":", label="reward std")
    terms = sorted(k for k in rows[0] if k.startswith("rewards/") and k.endswith("/mean"))
    if len(terms) > 1:
        for key in terms:
            ax.plot(steps, [r.get(key) for r in rows], lw=1, ls="--", label=key)
    ax.plot(steps, [r["frac_reward_zero_std"] for r in rows], color="gray", lw=1, label="groups all alike")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward / share")
    ax.set_title("sampled reward", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for key, color in (("kl", "tab:red"), ("entropy", "tab:green"), ("clip_ratio/region_mean", "tab:orange")):
        if any(key in r for r in rows):
            kl.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], color=color,
                    label=key)
    kl.set_xlabel("optimizer step")
    kl.set_yscale("symlog", linthresh=1e-3)
    kl.set_title("KL to the reference, entropy, clipped share", fontsize=9)
    kl.grid(alpha=0.3)
    kl.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, out_png)


def plot_rft(metrics_path: str | Path, out_png: str | Path, title: str = "RFT") -> Path | None:
    """A rejection-sampling run's samples against step: the share the grader accepted (the sampled pass rate),
    the share of prompts with at least one accepted answer, and the answers trained on a prompt; None when the
    run logged none."""
    rows = [r for r in read_metrics(metrics_path) if "frac_accepted" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.plot(steps, [r["frac_accepted"] for r in rows], color="tab:blue", lw=2, label="answers accepted")
    ax.plot(steps, [r["frac_prompts_solved"] for r in rows], color="tab:green", lw=1.5,
            label="prompts with an accepted answer")
    ax.plot(steps, [r["answers_trained"] for r in rows], color="tab:orange", lw=1, ls="--",
            label="answers trained on, a prompt")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share / answers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, out_png)
