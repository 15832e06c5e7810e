"""What the training loop does differently when it learns answers (`sft`) or preferences (`dpo`): how a
micro-batch of rows is collated, what one loss item is (a labelled token; a pair), and the module it calls
forward on. The loop, its checkpoints, resume, trackers and every device path are the same for both."""

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
    loss_model: Callable  # (model, recipe) -> the module the loop calls forward on


def _labelled(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _sft_loss(model, recipe: Recipe):
    from tunelab.train.loss import LabelledLoss
    return LabelledLoss(model)


def _pairs_batch(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    from tunelab.train.preference import collate_pairs
    return collate_pairs([(r.chosen, r.rejected) for r in rows], pad_id)


def _pairs(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def _preference_loss(model, recipe: Recipe):
    from tunelab.train.preference import PreferenceLoss, PreferenceLossModel
    p = recipe.train.preference
    return PreferenceLossModel(model, PreferenceLoss(p.loss, p.beta, p.simpo_gamma, p.sft_weight))


METHODS = {"sft": Method("sft", collate, _labelled, _sft_loss),
           "dpo": Method("dpo", _pairs_batch, _pairs, _preference_loss)}
