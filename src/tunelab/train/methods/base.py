"""What a training method is to the loop: how a micro-batch of rows is collated, what one loss item is (a
labelled token; a pair; a micro-batch or a completion token), the module it calls forward on, what its validation
measures, and for `grpo` and `rft` the rollout that samples and scores completions before the step counts its items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable


class Collate(Protocol):
    def __call__(self, rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
        """A micro-batch of rows as the loss module's forward takes it."""


class Items(Protocol):
    def __call__(self, batch: dict) -> int:
        """The loss items in a batch (the step's loss is the mean over the step's items)."""


class LossModel(Protocol):
    def __call__(self, model: Any, recipe: Any, tokenizer: Any, rewards: Any) -> Any:
        """The module the loop calls forward on (its output: this micro-batch's share of the step's loss)."""


class Validate(Protocol):
    def __call__(self, *, step: int, loss_model: Any, rows: Any, batch_size: int, pad_id: int, packed: bool,
                 flat: bool, device: Any, autocast_dtype: Any, dist: Any) -> dict:
        """The held-out metrics line of `step` over every rank's share of `rows` (summed across ranks); keywords
        only, as the loop passes them."""


class Rollout(Protocol):
    def __call__(self, loss_model: Any, batch: dict, step: int, rank: int, micro_batch: int, device: Any) -> dict:
        """A batch of prompts made into scored completions before the step counts its items (grpo, rft)."""


# What a loss module (`LossModel`'s answer) may offer the loop besides its forward: the loop asks with isinstance.
@runtime_checkable
class KeepsWindow(Protocol):
    """A loss module holding state between metrics lines (dpo's reward sums, grpo's rollouts still to be trained on):
    every rank's is saved in a checkpoint's trainer state and given back on resume."""

    def window(self) -> dict:
        """This rank's state since the last metrics line, as a checkpoint keeps it."""

    def set_window(self, window: dict | None) -> None:
        """Take back the state `window` gave (None: a checkpoint that kept none)."""


@runtime_checkable
class ReportsMetrics(Protocol):
    """A loss module with metrics of its own for the metrics line (dpo's rewards and margins, grpo's rewards, KL
    and clipping, distillation's KL)."""

    def take_metrics(self) -> dict[str, float]:
        """Its metrics since the last metrics line, as numbers; the sums start again."""


@runtime_checkable
class LaysOutRows(Protocol):
    """A loss module that makes its own batches (grpo's and rft's rollouts): the training setup tells it once how
    the run lays out rows, and it keeps that, instead of every batch carrying it through the loop."""

    def lay_out(self, packed: bool, flat: bool) -> None:
        """`packed`: rows packed (`data.packing`); `flat`: packed rows laid end to end (`collate_flat`)."""


@dataclass(frozen=True)
class Method:
    """A training method as the loop sees it; each callable's shape is its Protocol above."""

    name: str
    collate: Collate
    items: Items
    loss_model: LossModel
    validate: Validate
    rollout: Rollout | None = None
    # optimizer steps each step's rows are trained for (grpo's num_iterations)
    passes: Callable[[Any], int] = lambda recipe: 1
    # the model's dropout is off for the run (TRL's disable_dropout; `train.dropout.disable_dropout`): dpo, grpo, rft
    disables_dropout: bool = False


def token_validation(*, step: int, loss_model, rows, batch_size: int, pad_id: int, packed: bool, flat: bool, device,
                     autocast_dtype, dist) -> dict:
    """A corpus's val split (pretraining, or a corpus replayed while fine-tuning): the loss over its tokens."""
    from tunelab.train.distributed import all_sum
    from tunelab.train.validation import val_record, validation_sums
    return val_record(step, *all_sum(dist, list(validation_sums(
        loss_model, rows, batch_size=batch_size, pad_id=pad_id, packed=packed, device=device,
        autocast_dtype=autocast_dtype, rank=dist.rank, world=dist.world, flat=flat))))


def read_sums(sums: dict) -> dict[str, float]:
    """Metric sums kept on the device (0-d tensors, or numbers a checkpoint gave back) as numbers, in one copy."""
    import torch
    keys = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in sums.items() if k not in keys}
    if keys:
        out.update(zip(keys, torch.stack([sums[k].to(torch.float64) for k in keys]).tolist()))
    return {k: out[k] for k in sums}
