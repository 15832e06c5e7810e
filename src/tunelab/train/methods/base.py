"""What a training method is to the loop: how a micro-batch of rows is collated, what one loss item is (a
labelled token; a pair; a micro-batch or a completion token), the module it calls forward on, what its validation
measures, and for `grpo` the rollout that samples and scores completions before the step counts its items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    collate: Callable  # (rows, pad id, packed, flat) -> batch
    items: Callable  # batch -> the loss items in it, which the step's loss is the mean over
    loss_model: Callable  # (model, recipe, tokenizer, rewards) -> the module the loop calls forward on
    # (step, loss module, val rows, batch size, pad id, packed, flat, device, autocast dtype, dist) -> metrics line
    validate: Callable
    rollout: Callable | None = None  # (loss module, batch, step, rank, micro-batch index, device) -> batch
    passes: Callable = lambda recipe: 1  # optimizer steps each step's rows are trained for (grpo's num_iterations)


def token_validation(step: int, loss_model, rows, batch_size: int, pad_id: int, packed: bool, flat: bool, device,
                     autocast_dtype, dist) -> dict:
    """A corpus's val split (pretraining, or a corpus replayed while fine-tuning): the loss over its tokens."""
    from tunelab.train.distributed import all_sum
    from tunelab.train.validation import val_record, validation_sums
    return val_record(step, *all_sum(dist, list(validation_sums(
        loss_model, rows, batch_size, pad_id, packed, device, autocast_dtype, dist.rank, dist.world, flat))))
