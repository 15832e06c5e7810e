"""Where the training loop reports its steps: a metrics line every `log_every` steps (and at the last, and at an
early stop) into metrics.jsonl and the dashboards (`tunelab.track`, main process only), a validation line when a
step validated, and the progress bar; with the clock that makes tokens/s, MFU and the elapsed time count training
time only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunelab.track.names import step_metrics
from tunelab.train.methods.base import ReportsMetrics
from tunelab.train.mfu import mfu
from tunelab.train.setup import TrainingRun
from tunelab.train.step import StepResult, read_steps
from tunelab.train.trainer_state import LogWindow, Progress


class Clock:
    """Training seconds: since the last metrics line (what tokens/s and MFU divide by) and in all (`elapsed`,
    counting the seconds before a resume). Validation is left out of the first, a checkpoint hook (a sweep's
    evaluation) out of both."""

    def __init__(self, before_s: float):
        self.before_s = before_s  # training seconds before this process started
        self.window = time.perf_counter()
        self.start = time.perf_counter()

    def pause_window(self, seconds: float) -> None:
        """`seconds` spent validating: not in tokens/s and MFU."""
        self.window += seconds

    def pause(self, seconds: float) -> None:
        """`seconds` spent outside training (a checkpoint hook): in neither tokens/s nor the elapsed time."""
        self.window += seconds
        self.start += seconds

    def elapsed(self) -> float:
        return self.before_s + time.perf_counter() - self.start


class MetricsLog:
    """The metrics lines, the dashboards and the progress bar of a run's steps; `close` when the loop ends,
    however it ends, so that an error is a line of its own."""

    def __init__(self, run: TrainingRun, progress: Progress, start_step: int, resume_step: int | None):
        from tqdm.auto import tqdm
        self.run, self.progress = run, progress
        self.trackers = None
        if run.dist.main:  # the dashboards get every metrics line; a resumed run continues its own
            from tunelab.track.run import open_run_trackers
            self.trackers = open_run_trackers(run.recipe, run.run_dir, resume_step=resume_step)
        self.bar = tqdm(total=run.total_steps, initial=start_step, disable=not run.dist.main,
                        desc=f"train {run.recipe.name}", unit="step", dynamic_ncols=True)
        self.postfix: dict[str, str] = {}
        self.clock = Clock(progress.elapsed_s)

    def log(self, done: int, val: dict | None, stop: bool) -> None:
        """After step `done`: its metrics line when one is due — the steps since the last one read from the device
        first (`read_steps`: a bad one stops the run there) — and its validation line when it validated."""
        if done % self.run.recipe.train.log_every == 0 or done == self.run.total_steps or stop:
            self._train_line(done, read_steps(self.run, self.progress))
        if val is not None:
            self._write(val, done)
            self.postfix["val"] = f"{val['val_loss']:.4f}"
            self.bar.set_postfix(self.postfix)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.trackers is not None:
            self.trackers.close()

    def _train_line(self, done: int, result: StepResult) -> None:
        """The line averaging the steps since the last one (`Progress.window`), which it then empties."""
        run, window, clock = self.run, self.progress.window, self.clock
        now = time.perf_counter()
        tokens_per_s = window.tokens / (now - clock.window)
        rec = {"step": done, "epoch": round(done * run.rows_per_step / run.passes / run.rows.stream.rows_per_epoch, 4),
               "loss": window.loss, "lr": result.lr,
               "grad_norm": result.grad_norm, "tokens_per_s": tokens_per_s,
               "mfu": mfu(run.flops_tok, tokens_per_s, run.peak_tflops, run.dist.world),
               "memory_gib": _peak_memory_gib(run.dist.device),
               "elapsed_s": self.progress.elapsed_s + now - clock.start}
        if run.rows.stream.prefix:  # the samples' tokens, the shared prefix once per sample (what unshared rows feed)
            rec["sample_tokens_per_s"] = window.sample_tokens / (now - clock.window)
        loss_model = run.trained.loss_model
        if isinstance(loss_model, ReportsMetrics):  # dpo's rewards and margins, grpo's rewards, KL and clipping
            rec.update(loss_model.take_metrics())
        self._write(rec, done)
        self.postfix.update(loss=f"{rec['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
        self.bar.set_postfix(self.postfix)
        self.progress.window = LogWindow()
        clock.window = now

    def _write(self, record: dict, done: int) -> None:
        if self.run.dist.main:
            _append_line(self.run.metrics_path, record)
            self.trackers.log_metrics(step_metrics(record), done)


def _peak_memory_gib(device) -> float:
    """The process's peak memory so far, GiB: a GPU's allocated tensors (a host counter: no sync), or the
    host's resident set on a CPU."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def _append_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
