"""A finished run's train_summary.json: what was trained, on what, how fast, and where it ended. The hand-in,
the report and `tunelab run` read it; a resumed run that finds it has nothing left to train returns it as is.
Speeds are medians over the logged windows after the first (warm-up), read back from metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.recipe import Recipe
from tunelab.runs import best_checkpoint, list_checkpoints, read_metrics
from tunelab.train.distributed import Dist
from tunelab.train.plots import plot_grpo, plot_loss_curve, plot_rewards, plot_rft
from tunelab.train.setup import TrainingRows
from tunelab.train.trainer_state import Progress


def training_summary(recipe: Recipe, run_dir: Path, dist: Dist, progress: Progress, total_steps: int,
                     elapsed: float, rows: TrainingRows, flat: bool, precision: str, params: tuple[int, int],
                     flops_tok: float, peak_tflops: float) -> dict:
    """The summary of the run in `run_dir`; `params` is (trainable, total)."""
    stream = rows.stream
    # the lowest validation loss marks the best checkpoint of pretraining only: a fine-tuning run's best is decided
    # by its evaluated tasks (a replayed corpus's loss says what fine-tuning cost, not how well it did)
    best, best_val = best_checkpoint(run_dir) if recipe.data.corpus else (None, None)
    train_lines = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    logged = train_lines[1:] or train_lines
    summary = {"steps": progress.stopped_early_at or total_steps, "resumed_from": progress.step,
               "final_loss": progress.last_loss, "train_seconds": elapsed, "trainable_params": params[0],
               "total_params": params[1], "samples": rows.samples, "replayed_blocks": rows.replayed_blocks,
               "truncated": rows.truncated, "rows_per_epoch": stream.rows_per_epoch,
               "padding_pct": stream.padding_pct, "flat_rows": flat, "world_size": dist.world, "precision": precision,
               "checkpoints": [str(p) for p in list_checkpoints(run_dir)],
               "best_checkpoint": best, "best_val_loss": best_val, "stopped_early_at": progress.stopped_early_at,
               "flops_per_token": flops_tok, "peak_tflops": peak_tflops,
               "hardware": _hardware(dist.device, dist.world),
               "tokens_per_s": _median([r["tokens_per_s"] for r in logged]),
               "mfu": _median([r["mfu"] for r in logged if "mfu" in r])}
    if stream.prefix:
        summary["shared_prefix"] = stream.prefix
        summary["sample_tokens_per_s"] = _median([r["sample_tokens_per_s"] for r in logged
                                                  if "sample_tokens_per_s" in r])
    return summary


def write_summary(recipe: Recipe, run_dir: Path, summary: dict) -> None:
    """train_summary.json, the loss curve (with the validation loss, when it chose the best checkpoint), and a
    preference run's rewards, a grpo run's or an rft run's samples."""
    from tunelab.records import write_json
    write_json(run_dir / "train_summary.json", summary)
    title = (f"{recipe.name}: training and validation loss" if summary["best_checkpoint"]
             else f"{recipe.name}: training loss")
    plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=title)
    plot_rewards(run_dir / "metrics.jsonl", run_dir / "rewards.png", title=f"{recipe.name}: preference rewards")
    plot_grpo(run_dir / "metrics.jsonl", run_dir / "grpo.png", title=f"{recipe.name}: GRPO")
    plot_rft(run_dir / "metrics.jsonl", run_dir / "rft.png", title=f"{recipe.name}: rejection sampling")


def _hardware(device, world: int) -> str:
    """What trained, for the hand-in's description: "2 x NVIDIA A100-SXM4-80GB" or "AMD EPYC 7B13 (2 threads)"."""
    import torch

    from tunelab.train.mfu import machine_name
    name = machine_name(str(device))
    if device.type == "cpu":
        name += f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
    return f"{world} x {name}" if world > 1 else name


def _median(values: list[float]) -> float | None:
    import statistics
    return statistics.median(values) if values else None
