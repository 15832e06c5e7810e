"""GRPO as the loop sees it: a batch is prompts, the rollout (`grpo.GRPOLossModel.rollout`) samples and scores
their completions before the step counts its items, and each step's rows are trained `num_iterations` times."""

from __future__ import annotations

from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation


def _prompts(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    return {"rows": rows, "packed": packed, "flat": flat}  # the rollout makes the batch


def _grpo_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.errors import TunelabError
    from tunelab.train.methods.grpo import GRPOLossModel
    if rewards is None:
        raise TunelabError("a grpo run is scored by its rewards: train it through tunelab.pipeline (tunelab run / "
                           "tunelab train), which builds them from train.grpo.rewards", field="train.grpo.rewards")
    return GRPOLossModel(model, recipe.train.grpo, tokenizer, rewards, recipe.seed)


def _rollout(loss_model, batch: dict, step: int, rank: int, micro: int, device) -> dict:
    return loss_model.rollout(batch["rows"], step, rank, micro, device, batch["packed"], batch["flat"])


GRPO = Method("grpo", _prompts, lambda batch: batch["items"], _grpo_loss, token_validation, _rollout,
              lambda recipe: recipe.train.grpo.num_iterations)
