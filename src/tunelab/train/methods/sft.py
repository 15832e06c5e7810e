"""Supervised fine-tuning (and pretraining): the loss over labelled tokens (`sft_loss.LabelledLoss`; with
`train.distill`, a KL term to a teacher beside it: `distill_loss.DistilledLoss`), rows collated or packed by
`data.packing`, validated by the loss over a val split's tokens."""

from __future__ import annotations

from tunelab.data.packing import IGNORE, collate
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation


def _labelled(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _sft_loss(model, recipe: Recipe, tokenizer, rewards):
    spec = recipe.train.distill
    if spec is not None:
        from tunelab.train.methods.distill_loss import DistilledLoss, load_teacher
        teacher = load_teacher(spec.teacher, model, tokenizer, recipe.model.dtype) if spec.teacher else None
        return DistilledLoss(model, spec, teacher)
    from tunelab.train.methods.sft_loss import LabelledLoss
    return LabelledLoss(model)


SFT = Method("sft", collate, _labelled, _sft_loss, token_validation)
