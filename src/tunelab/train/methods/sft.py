"""Supervised fine-tuning (and pretraining): the loss over labelled tokens (`sft_loss.LabelledLoss`), rows
collated or packed by `data.packing`, validated by the loss over a val split's tokens."""

from __future__ import annotations

from tunelab.data.packing import IGNORE, collate
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation


def _labelled(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _sft_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.train.methods.sft_loss import LabelledLoss
    return LabelledLoss(model)


SFT = Method("sft", collate, _labelled, _sft_loss, token_validation)
