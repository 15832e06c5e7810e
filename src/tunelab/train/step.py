"""One optimizer step of the training loop, in the order it runs: this rank's share of the step's rows in
micro-batches (a grpo run samples and scores its completions first), forward and backward with the gradients
accumulated over the micro-batches (and synchronised across ranks at the last), then the optimizer step. The step's
loss and gradient norm stay on the device (`Unread`): `read_steps` reads every step since the last read in one copy
when the loop needs the numbers — a metrics line, a validation, a checkpoint, the end — and stops the run there if
one of them went bad. `loop.py` calls `train_step` once a step and does the rest around it.

Why not read each step: on a GPU each read is a wait for the device, the host idle until the step is done and the
device idle until the host queues the next. Deferred, a NaN step's update reaches the weights in memory, but never a
checkpoint (each is written after a read), and the error still names the step that went bad.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.packing import batch_to, pinned
from tunelab.errors import TunelabError
from tunelab.runs import list_checkpoints, step_of
from tunelab.train import sharding
from tunelab.train.distributed import all_sum, all_sum_tensor
from tunelab.train.divergence import DivergenceGuard
from tunelab.train.setup import TrainingRun
from tunelab.train.trainer_state import Progress


@dataclass
class StepResult:
    """What a step leaves for its metrics line and its checkpoint, read from the device (`read_steps`)."""

    loss: float  # the step's loss, summed over the micro-batches and ranks
    grad_norm: float  # before clipping
    lr: float  # the learning rate the step used


@dataclass(kw_only=True)
class Unread:
    """A step whose loss and gradient norm are still on the device, with the counts its metrics line adds."""

    done: int  # the steps done after it (1-based)
    loss: object  # 0-d tensors on the device
    grad_norm: object
    lr: float
    items: float
    tokens: float
    sample_tokens: float
    overflow_possible: bool  # fp16's scaler skips an overflowing step itself: an inf norm is not the run's end


def train_step(run: TrainingRun, train_model, progress: Progress, step: int, prefetch: Prefetch) -> None:
    """Train step `step` (0-based) on this rank's share of its rows; the step's loss and gradient norm join
    `progress.unread` (`read_steps` reads them). `prefetch` is the loop's own (`Prefetch`: one per run, closed when
    the loop ends): it hands over this step's batches and starts collating the next. A step that samples (grpo,
    rft) is read at once: its next rollout would sample from weights a bad step had broken."""
    batches, local_tokens, local_samples = _micro_batches(run, step, prefetch)
    local_items = sum(run.method.items(b) for b in batches)
    global_items = all_sum(run.dist, [local_items])[0]
    step_loss = all_sum_tensor(run.dist, _forward_backward(run, train_model, batches, global_items))
    tokens, sample_tokens = all_sum(run.dist, [local_tokens, local_samples])
    norm, step_lr = _optimizer_step(run)
    progress.unread.append(Unread(done=step + 1, loss=step_loss, grad_norm=norm, lr=step_lr, items=global_items,
                                  tokens=tokens, sample_tokens=sample_tokens,
                                  overflow_possible=run.opt.scaler is not None))
    if run.method.rollout is not None:
        read_steps(run, progress)


def read_steps(run: TrainingRun, progress: Progress) -> StepResult | None:
    """Read the unread steps' losses and gradient norms from the device in one copy, check them in step order
    (NaN or infinity, then the divergence guard: the error names the step that went bad and the last checkpoint
    before it), add them to the metrics line's window; the last one's numbers (None when all were read)."""
    import torch
    unread, progress.unread = progress.unread, []
    if not unread:
        return progress.last
    values = torch.stack([t.to(unread[0].loss.device, unread[0].loss.dtype)
                          for u in unread for t in (u.loss, u.grad_norm)]).tolist()
    for i, u in enumerate(unread):
        loss, grad_norm = values[2 * i], values[2 * i + 1]
        # fp16: an overflowing gradient is the scaler's to handle (it skipped the step and lowered the scale)
        if not (u.overflow_possible and math.isfinite(loss) and not math.isfinite(grad_norm)):
            _stop_on_a_bad_step(u.done, loss, grad_norm, progress.guard, run.run_dir)
        progress.last_loss = loss
        progress.window.add(loss, u.items, u.tokens, u.sample_tokens)
        progress.last = StepResult(loss, grad_norm, u.lr)
    return progress.last


class Prefetch:
    """The next step's micro-batches collated on a worker thread while this step's forward and backward run on an
    accelerator (the host's work — picking rows, packing an epoch, building the tensors, pinning them — never holds
    the device up). One step ahead, in step order, so the batches are the ones the step would have built itself.
    On the CPU the host is the device: a worker would only take cores from the step, so it collates in place.

    One belongs to one run of the loop, which creates it and closes it when its steps end (`loop._train`): nothing
    collated for one run, nor its worker thread, outlives it or reaches another run in the same process."""

    def __init__(self):
        self._pool = None
        self._ahead: tuple | None = None  # (run, step, future)

    def take(self, run: TrainingRun, step: int) -> tuple[list[dict], int, int]:
        ahead, self._ahead = self._ahead, None
        got = ahead[2].result() if ahead and ahead[0] is run and ahead[1] == step else _collated(run, step)
        if step + 1 < run.total_steps and run.dist.device.type != "cpu":
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tunelab-collate")
            self._ahead = (run, step + 1, self._pool.submit(_collated, run, step + 1))
        return got

    def drop(self) -> None:
        """Forget the batches collated ahead (the loop ended: they and the run they hold are not needed)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[2].cancel() or ahead[2].exception()  # a collation running now finishes before the run is let go

    def close(self) -> None:
        """Drop what was collated ahead and end the worker thread (idempotent; the loop's `finally`)."""
        self.drop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _collated(run: TrainingRun, step: int) -> tuple[list[dict], int, int]:
    """This rank's share of the step's rows, collated in micro-batches (pinned for a GPU), with its tokens and
    sample tokens."""
    tc, dist, method = run.recipe.train, run.dist, run.method
    step_rows = run.rows.stream.rows(step // run.passes * run.rows_per_step, run.rows_per_step)[dist.rank::dist.world]
    micro = [step_rows[i: i + tc.batch_size] for i in range(0, len(step_rows), tc.batch_size)]
    batches = [method.collate(chunk, run.tokenizer.pad_token_id, run.recipe.data.packing, run.trained.flat)
               for chunk in micro]
    if dist.device.type == "cuda":
        batches = [pinned(b) for b in batches]
    return batches, sum(len(r.input_ids) for r in step_rows), sum(r.sample_tokens for r in step_rows)


def _micro_batches(run: TrainingRun, step: int, prefetch: Prefetch) -> tuple[list[dict], int, int]:
    """This rank's share of the step's rows, collated in micro-batches (by the run's `prefetch`), with its tokens
    and sample tokens (a grpo run's batches are its rollouts, counted by the tokens they hold)."""
    method, dist = run.method, run.dist
    batches, local_tokens, local_samples = prefetch.take(run, step)
    if method.rollout is not None:  # grpo, rft: completions sampled and scored before the items are counted
        with _autocast(run):
            batches = [method.rollout(run.trained.loss_model, b, step, dist.rank, i, dist.device)
                       for i, b in enumerate(batches)]
        local_tokens = sum(b["tokens"] for b in batches)
    return batches, local_tokens, local_samples


def _forward_backward(run: TrainingRun, train_model, batches: list[dict], global_items: float):
    """Forward and backward over the micro-batches, gradients accumulated (and synchronised across ranks at the
    last micro-batch); returns this rank's summed loss, a float64 0-d tensor on the device (summed as Python
    summed the floats it read before: the same number, without waiting for each micro-batch)."""
    import torch
    dist, fsdp, scaler = run.dist, run.trained.fsdp, run.opt.scaler
    # float64 as Python's floats were; MPS has no float64, so there the sum is float32
    total = torch.float32 if dist.device.type == "mps" else torch.float64
    step_loss = torch.zeros((), dtype=total, device=dist.device)
    for i, batch in enumerate(batches):
        batch = batch_to(batch, dist.device)
        sync = i == len(batches) - 1 or dist.world == 1
        if fsdp:
            sharding.set_gradient_sync(run.trained.loss_model, sync)
        ctx = train_model.no_sync() if not (sync or fsdp) else contextlib.nullcontext()
        with ctx, _autocast(run):
            loss = train_model(**batch, num_items_in_batch=max(1, global_items))
        scaled = loss * dist.world  # DDP averages gradients over ranks; undo it for a global sum
        (scaler.scale(scaled) if scaler else scaled).backward()
        step_loss += loss.detach()
    return step_loss


def _optimizer_step(run: TrainingRun) -> tuple:
    """The optimizer step; returns the gradient norm before clipping (a 0-d tensor on the device: not read here)
    and the learning rate the step used."""
    import torch
    opt, scaler = run.opt, run.opt.scaler
    if scaler:
        scaler.unscale_(opt.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(opt.params, run.recipe.train.max_grad_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
    step_lr = opt.scheduler.get_last_lr()[0]
    if scaler:
        scaler.step(opt.optimizer)
        scaler.update()
    else:
        opt.optimizer.step()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
    return norm.detach(), step_lr


def _autocast(run: TrainingRun):
    """The run's autocast: its dtype, or off (fp32, or FSDP's own mixed precision)."""
    import torch
    dtype = run.trained.autocast_dtype
    return torch.autocast(run.dist.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _stop_on_a_bad_step(done: int, step_loss: float, grad_norm: float, guard: DivergenceGuard,
                        run_dir: Path) -> None:
    """Raise when step `done`'s loss or gradient norm is not finite (a NaN/inf gradient poisons the weights even
    while the loss still looks finite) or the divergence guard sees the run stop learning or run away; the error
    names the last checkpoint written before it went bad (every checkpoint is written after a read)."""
    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
        what = f"loss became {step_loss}" if not math.isfinite(step_loss) else f"gradient norm became {grad_norm}"
        kept = list_checkpoints(run_dir)
        raise TunelabError(f"{what} at step {done}; stopping. Last good checkpoint: "
                           f"{kept[-1] if kept else 'none'} (try a lower train.lr)", field="train.lr")
    diverged = guard.update(step_loss, grad_norm)
    if diverged:
        good = [c for c in list_checkpoints(run_dir) if step_of(c) <= done - guard.since]
        raise TunelabError(f"{diverged}; stopping at step {done}. Last good checkpoint: "
                           f"{good[-1] if good else 'none'} (try a lower train.lr; train.divergence has the "
                           "thresholds and the off switch)", field="train.lr")
