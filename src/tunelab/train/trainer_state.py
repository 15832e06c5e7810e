"""A checkpoint's trainer_state.pt, both ways: what the loop saves (`capture`) and how a resumed run takes it
back (`restore`, `Progress.resumed`, `global_batch`). Every key is written and read here, so a key added on
one side is seen beside the other.

A resumed run must continue as if never stopped: the same weights, optimizer moments, learning rate, gradient
scale, random state (each rank's dropout masks), and the loop's own counters — the partly filled metrics
window, early stopping, the divergence guard, the step an early stop ended at, the elapsed time — so that it
writes the same metrics lines and checkpoints as an unbroken run. Reading the files and choosing the checkpoint
is `checkpoints.py`'s (`find_resume_point`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.run_format import stamped
from tunelab.train.checkpoints import ResumePoint, find_resume_point
from tunelab.train.distributed import DEVICE_BACKENDS, Dist, barrier
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.validation import EarlyStopping

log = logging.getLogger(__name__)


@dataclass
class LogWindow:
    """The sums the next metrics line averages over, since the last one: the loss weighted by its items (tokens,
    pairs or completion tokens), the items, the tokens fed and the samples' own tokens (a shared prefix counted
    once per sample)."""

    loss_items: float = 0.0
    items: float = 0.0
    tokens: float = 0.0
    sample_tokens: float = 0.0

    def add(self, loss: float, items: float, tokens: float, sample_tokens: float) -> None:
        self.loss_items += loss * items
        self.items += items
        self.tokens += tokens
        self.sample_tokens += sample_tokens

    @property
    def loss(self) -> float:
        return self.loss_items / max(1, self.items)

    def saved(self) -> tuple[float, float, float, float]:
        """As a checkpoint's `trainer_state.json` keeps it (`log_window`, a list in that order)."""
        return self.loss_items, self.items, self.tokens, self.sample_tokens

    @classmethod
    def from_saved(cls, saved) -> LogWindow:
        """From `saved()`'s list (an older checkpoint's is brought to it by `run_format.migrate`)."""
        return cls(*map(float, saved))


@dataclass
class Progress:
    """The loop's counters that a checkpoint carries over to the resumed run."""

    stopper: EarlyStopping
    guard: DivergenceGuard
    step: int = 0  # the steps done when this process started (0, or the checkpoint's)
    elapsed_s: float = 0.0  # training seconds before this process started
    # what the next metrics line averages over: a resumed run writes the same metrics lines as an uninterrupted
    # one even when checkpoints fall between log steps
    window: LogWindow = field(default_factory=lambda: LogWindow())
    stopped_early_at: int | None = None
    last_loss: float = float("nan")
    # the steps whose loss and gradient norm are still on the device (`step.read_steps`), and the last one read:
    # never carried over (every checkpoint is written after a read)
    unread: list = field(default_factory=list)
    last: object = None  # step.StepResult

    def resumed(self, point: ResumePoint) -> None:
        """Take the counters back from the checkpoint."""
        ts = point.trainer_state
        self.step, self.elapsed_s = ts["step"], ts["elapsed_s"]
        if "log_window" in ts:
            self.window = LogWindow.from_saved(ts["log_window"])
        if "early_stopping" in ts:
            self.stopper.best, self.stopper.bad = ts["early_stopping"]["best"], ts["early_stopping"]["bad"]
        self.guard.load(ts.get("divergence", {}))
        self.stopped_early_at = ts.get("stopped_early_at")
        # the loss a run killed after its last checkpoint (before the summary) resumes to report
        self.last_loss = point.state["loss"]

    def count_lost(self, logged: list[dict]) -> None:
        """Count the time a process spent past the checkpoint this run resumes from (killed before its next
        checkpoint, or before its first) as training time: its steps are trained again and their lines dropped,
        but the time was spent on the run, so `train_seconds` is the sum over every process that trained it.
        Its lines' `elapsed_s` started from this checkpoint's, so the last of them is that sum so far."""
        past = [r["elapsed_s"] for r in logged
                if r["step"] > self.step and isinstance(r.get("elapsed_s"), (int, float))]
        self.elapsed_s = max([self.elapsed_s, *past])


def capture(model, optimizer, scheduler, scaler, rng: list[dict], progress: Progress, rows_per_step: int,
            step: int, elapsed_s: float, sharded: bool, loss_window: list | None = None) -> dict:
    """The trainer state of a checkpoint at `step` (rank 0's; `rng` is every rank's, `gather_rng`). A sharded
    run's weights and optimizer are in the checkpoint's DCP files (`sharding.save_sharded`), not here.
    `loss_window`: every rank's loss-module window (`gather_objects`): what it sums for the next metrics line (a
    preference run's rewards), so that a resumed run logs the same lines as an unbroken one, as `log_window` does
    for the loss, and a grpo generation batch still to be trained on (`num_iterations` > 1)."""
    if sharded:
        trained = {"sharded": True}
    else:
        trained = {"trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                                 if p.requires_grad}, "optimizer": optimizer.state_dict()}
    return stamped({**trained, "scheduler": scheduler.state_dict(), "rng": rng,
            "grad_scaler": scaler.state_dict() if scaler else None,
            "log_window": progress.window.saved(), "loss_window": loss_window,
            "early_stopping": progress.stopper.state(), "divergence": progress.guard.state(),
            "stopped_early_at": progress.stopped_early_at, "rows_per_step": rows_per_step,
            "step": step, "elapsed_s": elapsed_s})


def gather_rng(dist: Dist) -> list[dict]:
    """Every rank's CPU, Python and device RNG states, in rank order (a collective: every rank calls it)."""
    import torch
    state = {"torch": torch.get_rng_state(), "py": random.getstate()}
    if dist.device is not None and dist.device.type in DEVICE_BACKENDS:
        state["device"] = getattr(torch, dist.device.type).get_rng_state(dist.device)
    return gather_objects(dist, state)


def gather_objects(dist: Dist, obj) -> list:
    """Every rank's `obj` (picklable, tensors on the CPU), in rank order (a collective: every rank calls it)."""
    if dist.world == 1:
        return [obj]
    import torch.distributed as td
    out: list = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


def rank_window(trainer_state: dict, rank: int) -> dict | None:
    """This rank's loss-module window from a trainer state (`capture`'s `loss_window`: one a rank)."""
    windows = trainer_state.get("loss_window") or []
    return windows[rank] if rank < len(windows) else None


def resume_point(run_dir: Path, dist: Dist) -> ResumePoint | None:
    """The main process sets damaged checkpoints aside first; then every rank finds the same one."""
    point = find_resume_point(run_dir, main=True) if dist.main else None
    barrier(dist)
    return point if dist.main else find_resume_point(run_dir, main=False)


def global_batch(batch_size: int, grad_accum: int, world: int, point: ResumePoint | None) -> int:
    """Rows per optimizer step: micro-batch × accumulation × processes, or, resuming, what the run started with
    (a run resumed on another number of processes keeps its global batch by accumulating more or fewer
    micro-batches per process: the same data per step, the same schedule)."""
    rows = batch_size * grad_accum * world
    started = point.trainer_state.get("rows_per_step", rows) if point is not None else rows
    if started != rows:
        if started % (batch_size * world):
            raise TunelabError(f"this run takes {started} rows a step; {world} process{'es' if world > 1 else ''} "
                               f"of {batch_size}-row micro-batches cannot divide them: resume on a number of "
                               "processes that does", field="train.batch_size")
        log.warning("resuming on %d process%s: %d micro-batches each per step keep the run's %d rows a step",
                    world, "es" if world > 1 else "", started // (batch_size * world), started)
    return started


def restore(point: ResumePoint, loss_model, optimizer, scheduler, scaler, dist: Dist, fsdp: bool) -> str | None:
    """The trainable weights, the optimizer, the scheduler, the fp16 gradient scaler and this rank's RNGs as
    they were at the checkpoint; a note when the checkpoint was written by another number of processes (the
    ranks it had not are seeded from rank 0's state, so their dropout differs from an unbroken run's)."""
    import torch
    ts = point.trainer_state
    if ts.get("sharded"):  # any number of processes, sharded or not: DCP reshards on load
        from tunelab.train import sharding
        sharding.load_sharded(point.ckpt, loss_model, optimizer)
    elif fsdp:
        raise TunelabError("this checkpoint was written by one process or under DDP, and the run now shards its "
                           "model (train.strategy fsdp): resume it on one process or with train.strategy ddp",
                           file=point.ckpt)
    else:
        named = dict(loss_model.model.named_parameters())
        with torch.no_grad():
            for name, value in ts["trainable"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    if scaler is not None and ts.get("grad_scaler"):
        scaler.load_state_dict(ts["grad_scaler"])
    # before per-rank states, a checkpoint held rank 0's CPU and Python RNGs and every visible GPU's
    rngs = ts.get("rng") or [{"torch": ts["torch_rng"], "py": ts["py_rng"], "all_cuda": ts.get("cuda_rng")}]
    mine = rngs[dist.rank] if dist.rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["torch"])
    random.setstate(mine["py"])
    device = dist.device
    if mine.get("device") is not None and device.type in DEVICE_BACKENDS:
        getattr(torch, device.type).set_rng_state(mine["device"], device)
    elif mine.get("all_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["all_cuda"])
    if len(rngs) != dist.world:
        return (f"the checkpoint was written by {len(rngs)} process{'es' if len(rngs) > 1 else ''} and the run "
                f"resumes on {dist.world}: the random state of ranks {len(rngs)}..{dist.world - 1} starts from "
                "rank 0's, so dropout differs from an unbroken run" if dist.world > len(rngs) else
                f"the checkpoint was written by {len(rngs)} processes and the run resumes on {dist.world}: the random "
                f"state of ranks {dist.world}..{len(rngs) - 1} is not used")
    return None
