"""Supervised fine-tuning (and pretraining): the loss over labelled tokens (`sft_loss.LabelledLoss`; with
`train.distill`, a KL term to a teacher beside it: `distill_loss.DistilledLoss`), rows collated or packed by
`data.packing`, validated by the loss over a val split's tokens."""

from __future__ import annotations

from tunelab.data.packing import IGNORE, collate
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation


def collate_labelled(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    """`collate`, and the flat positions of the labelled tokens (`label_index`), found here on the host: the
    loss gathers them without the device having to report how many there are, and they are the loss items."""
    from tunelab.model.kernels.logprobs import flat_positions
    batch = collate(rows, pad_id, packed, flat)
    batch["label_index"] = flat_positions(batch["labels"][:, 1:] != IGNORE)
    return batch


def _labelled(batch: dict) -> int:
    return len(batch["label_index"])


def _sft_loss(model, recipe: Recipe, tokenizer, rewards):
    spec = recipe.train.distill
    if spec is not None:
        from tunelab.train.methods.distill_loss import DistilledLoss, load_teacher
        teacher = load_teacher(spec.teacher, model, tokenizer, recipe.model.dtype) if spec.teacher else None
        return DistilledLoss(model, spec, teacher)
    from tunelab.train.methods.sft_loss import LabelledLoss
    return LabelledLoss(model)


SFT = Method("sft", collate_labelled, _labelled, _sft_loss, token_validation)
