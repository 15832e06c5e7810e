"""What the training loop does differently when it learns answers (`sft`), preferences (`dpo`) or from rewarded
samples (`grpo`): how a micro-batch of rows is collated, what one loss item is (a labelled token; a pair; a
micro-batch or a completion token), the module it calls forward on, what its validation measures, and for `grpo`
the rollout that samples and scores completions before the step counts its items. The loop, its checkpoints, resume, trackers and every
device path are the same for all three."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tunelab.data.packing import IGNORE, collate
from tunelab.recipe import Recipe


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


def _labelled(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _token_validation(step: int, loss_model, rows, batch_size: int, pad_id: int, packed: bool, flat: bool, device,
                      autocast_dtype, dist) -> dict:
    """A corpus's val split (pretraining, or a corpus replayed while fine-tuning): the loss over its tokens."""
    from tunelab.train.distributed import all_sum
    from tunelab.train.validation import val_record, validation_sums
    return val_record(step, *all_sum(dist, list(validation_sums(
        loss_model, rows, batch_size, pad_id, packed, device, autocast_dtype, dist.rank, dist.world, flat))))


def _pair_validation(step: int, loss_model, rows, batch_size: int, pad_id: int, packed: bool, flat: bool, device,
                     autocast_dtype, dist) -> dict:
    """Held-out preference pairs (`data.val`): every rank's share, summed across ranks."""
    from tunelab.train.distributed import all_sum
    from tunelab.train.preference import held_out_record
    loss_sum, sums, pairs = loss_model.validate(rows, batch_size, pad_id, device, autocast_dtype, dist.rank,
                                                dist.world)
    keys = sorted(sums)
    total = all_sum(dist, [loss_sum, pairs, *(sums[k] for k in keys)])
    return held_out_record(step, total[0], total[1], dict(zip(keys, total[2:])))


def _sft_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.train.loss import LabelledLoss
    return LabelledLoss(model)


def _pairs_batch(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    from tunelab.train.preference import collate_pairs
    return collate_pairs([(r.chosen, r.rejected) for r in rows], pad_id)


def _pairs(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def _preference_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.train.preference import PreferenceLoss, PreferenceLossModel
    p = recipe.train.preference
    return PreferenceLossModel(model, PreferenceLoss(p.loss, p.beta, p.simpo_gamma, p.sft_weight))


def _prompts(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    return {"rows": rows, "packed": packed, "flat": flat}  # the rollout makes the batch


def _grpo_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.errors import TunelabError
    from tunelab.train.grpo_method import GRPOLossModel
    if rewards is None:
        raise TunelabError("a grpo run is scored by its rewards: train it through tunelab.pipeline (tunelab run / "
                           "tunelab train), which builds them from train.grpo.rewards", field="train.grpo.rewards")
    return GRPOLossModel(model, recipe.train.grpo, tokenizer, rewards, recipe.seed)


def _rollout(loss_model, batch: dict, step: int, rank: int, micro: int, device) -> dict:
    return loss_model.rollout(batch["rows"], step, rank, micro, device, batch["packed"], batch["flat"])


METHODS = {"sft": Method("sft", collate, _labelled, _sft_loss, _token_validation),
           "dpo": Method("dpo", _pairs_batch, _pairs, _preference_loss, _pair_validation),
           "grpo": Method("grpo", _prompts, lambda batch: batch["items"], _grpo_loss, _token_validation, _rollout,
                           lambda recipe: recipe.train.grpo.num_iterations)}
