"""Preference training (DPO and its relatives): a loss item is a chosen/rejected pair (`dpo_rows`), the loss
and its reward metrics are `dpo_loss`'s, validated on held-out pairs."""

from __future__ import annotations

from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method


def _pair_validation(*, step: int, loss_model, rows, batch_size: int, pad_id: int, packed: bool, flat: bool, device,
                     autocast_dtype, dist) -> dict:
    """Held-out preference pairs (`data.val`): every rank's share, summed across ranks."""
    from tunelab.train.distributed import all_sum
    from tunelab.train.methods.dpo_loss import held_out_record
    loss_sum, sums, pairs = loss_model.validate(rows, batch_size, pad_id, device, autocast_dtype, dist.rank,
                                                dist.world)
    keys = sorted(sums)
    total = all_sum(dist, [loss_sum, pairs, *(sums[k] for k in keys)])
    return held_out_record(step, total[0], total[1], dict(zip(keys, total[2:])))


def _pairs_batch(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    from tunelab.train.methods.dpo_loss import collate_pairs
    return collate_pairs([(r.chosen, r.rejected) for r in rows], pad_id)


def _pairs(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def _preference_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.train.methods.dpo_loss import PreferenceLoss, PreferenceLossModel
    p = recipe.train.preference
    return PreferenceLossModel(model, PreferenceLoss(p.loss, p.beta, p.simpo_gamma, p.sft_weight))


DPO = Method("dpo", _pairs_batch, _pairs, _preference_loss, _pair_validation, disables_dropout=True)
