"""Preference losses on pairs of answers to one prompt: DPO (`sigmoid`), IPO (`ipo`) and the reference-free SimPO
(`simpo`), with an optional SFT term on the chosen answer, and the numbers TRL logs for them.

A batch holds the chosen rows then the rejected rows (2B rows; row i and row B + i answer the same prompt), and a
`completion_mask` marking each row's answer tokens. A row's log-probability is the sum over its answer tokens of
log p(token | everything before it); the reference's is the same under the model with its LoRA adapter switched
off (`reference_logps`, through the one reference switch `model.reference.reference_policy`): the base the
adapter started from, with no second copy of the model in memory.

What each loss is, with d = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected)):
- `sigmoid` (DPO, Rafailov et al. 2023): −log σ(β·d).
- `ipo` (Azar et al. 2023, eq. 17): ((d_c/n_c − d_r/n_r) − 1/(2β))², each answer's log-ratio averaged over its
  n answer tokens, as TRL does (the length normalisation the IPO authors confirmed to TRL).
- `simpo` (Meng et al. 2024): −log σ(β·(log π(c)/n_c − log π(r)/n_r) − γ), no reference at all.
- `sft_weight` w adds w × the mean negative log-likelihood of the chosen answers' tokens.

These are TRL 1.16's `DPOTrainer` losses `sigmoid`, `ipo` and `sft` (and `CPOTrainer`'s `simpo` with
`cpo_alpha=0`); `tests/test_preference_loss.py` checks loss, metrics and gradients against TRL itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.model.kernels.logprobs import flat_positions, scored_logps
from tunelab.recipe.train import PREFERENCE_LOSSES
from tunelab.train.methods.base import read_sums


@dataclass(frozen=True)
class PreferenceLoss:
    """`beta`: DPO/IPO's regularisation (β, τ for IPO), SimPO's reward scale; `simpo_gamma`: SimPO's target reward
    margin γ (its γ/β ratio is what the paper tunes, 0.5 by default); `sft_weight`: the weight of the chosen
    answers' NLL added to the loss (0: none)."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    sft_weight: float = 0.0

    def __post_init__(self):
        if self.loss_type not in PREFERENCE_LOSSES:  # the recipe checked its own: this is a caller's in Python
            raise ValueError(f"loss type {self.loss_type!r} is not one of {', '.join(PREFERENCE_LOSSES)}")

    @property
    def needs_reference(self) -> bool:
        return self.loss_type != "simpo"


def answer_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                     completion_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's summed answer log-probability, its per-token log-probabilities, (rows, T-1) fp32, 0 outside
    the answer). Only the answer positions are projected onto the vocabulary, a chunk at a time
    (`model.kernels.logprobs`): never (rows × T × vocabulary) in fp32. `completion_index`: those positions as
    `collate_pairs` found them on the host (else found here, a wait on the device)."""
    per_token, _ = scored_logps(model, input_ids, completion_mask[:, 1:], index=completion_index,
                                attention_mask=causal_mask(model, attention_mask))
    return per_token.sum(dim=1), per_token


def causal_mask(model, attention_mask: torch.Tensor) -> torch.Tensor:
    """The padded rows' causal mask, 4-D, made from the 2-D one by tensor operations alone. Given the 2-D mask,
    transformers first asks the device whether any row is padded (a wait) and then builds this same mask; given
    this one, it uses it as it is. Models whose attention takes no 4-D mask (flash attention) keep the 2-D one."""
    from tunelab.model.kernels.attention import MASKED_ATTENTION, additive_for_eager
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) not in MASKED_ATTENTION or attention_mask.ndim != 2:
        return attention_mask
    width = attention_mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=attention_mask.device).tril()
    return additive_for_eager(config, causal[None, None] & attention_mask.bool()[:, None, None, :])


def reference_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                    completion_index: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's answer log-probability under the reference (`model.reference.reference_policy`: the model with
    its adapter switched off, in eval mode, without gradients). A model without an adapter has no reference and
    this raises: give `preference_loss` precomputed reference log-probabilities instead."""
    from tunelab.model.reference import reference_policy
    with reference_policy(model):
        return answer_logps(model, input_ids, attention_mask, completion_mask, completion_index)[0]


def preference_loss(spec: PreferenceLoss, policy: torch.Tensor, completion_mask: torch.Tensor,
                    reference: torch.Tensor | None = None, per_token: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the batch's loss, TRL's metrics for it, 0-d tensors) from the rows' answer log-probabilities: `policy` (2B,), the
    `reference`'s (2B,; None for SimPO), and the policy's `per_token` ones (for the SFT term)."""
    chosen, rejected = policy.chunk(2)
    n_chosen, n_rejected = completion_mask.sum(dim=1).clamp(min=1).chunk(2)
    if spec.loss_type == "simpo":  # length-normalised: its log-probabilities (and TRL's logged ones) are averages
        chosen, rejected = chosen / n_chosen, rejected / n_rejected
        losses = -F.logsigmoid(spec.beta * (chosen - rejected) - spec.simpo_gamma)
        chosen_rewards, rejected_rewards = spec.beta * chosen, spec.beta * rejected
    else:
        if reference is None:
            raise ValueError(f"the {spec.loss_type} loss needs the reference's log-probabilities")
        ref_chosen, ref_rejected = reference.chunk(2)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if spec.loss_type == "sigmoid":
            losses = -F.logsigmoid(spec.beta * (chosen_ratio - rejected_ratio))
        else:  # ipo
            losses = (chosen_ratio / n_chosen - rejected_ratio / n_rejected - 1 / (2 * spec.beta)) ** 2
        chosen_rewards, rejected_rewards = spec.beta * chosen_ratio, spec.beta * rejected_ratio
    loss = losses.mean()
    if spec.sft_weight:
        if per_token is None:
            raise ValueError("the SFT term needs the policy's per-token log-probabilities")
        chosen_tokens, _ = per_token.chunk(2)
        chosen_mask, _ = completion_mask[:, 1:].chunk(2)
        # the mean over the answer tokens, without a boolean mask (its size is the device's to report)
        loss = loss + spec.sft_weight * -(chosen_tokens * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    # 0-d tensors, read once a metrics line (`read_sums`): the step never waits on the device for them
    metrics = {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
               "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
               "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
               "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
    return loss, metrics


def collate_pairs(pairs: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """(chosen, rejected) encodings (`tunelab.data.packing.Encoded`, answer-only labels) as one batch: the chosen
    rows, then the rejected rows, padded on the right; `completion_mask` marks the answer tokens (the labelled
    ones), as TRL's collator does."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    width = max(len(e.input_ids) for e in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, e in enumerate(rows):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attention[i, :n] = 1
        completion[i, :n] = torch.tensor([label != -100 for label in e.labels], dtype=torch.long)
    # the answer positions' flat index, found here on the host (`scored_logps`: no wait on the device for it)
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "completion_index": flat_positions(completion[:, 1:])}


def held_out_record(step: int, loss_sum: float, pairs: float, sums: dict[str, float]) -> dict:
    """The metrics.jsonl line of one validation on held-out pairs: the loss and TRL's metrics, averaged over the
    pairs, each named `val_` + its training name (`val_rewards/accuracies`: TRL's `eval_rewards/accuracies`)."""
    n = max(1.0, pairs)
    return {"step": step, "val_loss": loss_sum / n, **{f"val_{key}": value / n for key, value in sums.items()},
            "val_pairs": int(pairs)}


class PreferenceLossModel(torch.nn.Module):
    """What the training loop calls forward on in a preference run, as `loss.LabelledLoss` in a fine-tuning one:
    `forward(input_ids, attention_mask, completion_mask, num_items_in_batch)` returns this micro-batch's share
    of the step's loss (the mean over the step's pairs: `num_items_in_batch` counts them), and keeps TRL's
    metrics for the loop's next metrics line (`take_metrics`). A dpo run trains with the model's dropout off, as
    TRL's DPOConfig does by default (`Method.disables_dropout`, done where the run is set up): a reward is a
    difference of log-probabilities, and dropout would make the policy's and the reference's disagree by noise."""

    def __init__(self, model: torch.nn.Module, spec: PreferenceLoss):
        super().__init__()
        self.model, self.spec = model, spec
        self._sums: dict = {}  # metric -> its sum × pairs: a 0-d tensor on the device until read
        self._pairs = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                num_items_in_batch: int, completion_index: torch.Tensor | None = None) -> torch.Tensor:
        from tunelab.model.kernels.rotary import fast_rotary
        with fast_rotary(self.model):
            policy, per_token = answer_logps(self.model, input_ids, attention_mask, completion_mask,
                                                 completion_index)
            reference = (reference_logps(self.model, input_ids, attention_mask, completion_mask, completion_index)
                         if self.spec.needs_reference else None)
        loss, metrics = preference_loss(self.spec, policy, completion_mask, reference, per_token)
        pairs = input_ids.shape[0] // 2
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value * pairs
        self._pairs += pairs
        return loss * pairs / num_items_in_batch

    def validate(self, rows: list, batch_size: int, pad_id: int, device, autocast_dtype, rank: int = 0,
                 world: int = 1) -> tuple[float, dict[str, float], int]:
        """(summed loss, summed metrics, pairs) over this rank's share of held-out pair rows, without gradients;
        the training metrics gathered for the next metrics line are left as they were."""
        from tunelab.data.packing import batch_to
        from tunelab.model.eval_mode import eval_mode
        saved = self.window()
        self.set_window(None)
        total, count = 0.0, 0
        try:
            with eval_mode(self), torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                                  enabled=autocast_dtype is not None):
                for start in range(rank * batch_size, len(rows), batch_size * world):
                    chunk = rows[start:start + batch_size]
                    batch = collate_pairs([(r.chosen, r.rejected) for r in chunk], pad_id)
                    total += self(**batch_to(batch, device), num_items_in_batch=1).item()  # the mean × pairs
                    count += len(chunk)
            sums = read_sums(self._sums)
        finally:
            self.set_window(saved)
        return total, sums, count

    def window(self) -> dict:
        """The sums since the last metrics line, for a checkpoint (`trainer_state.capture`)."""
        return {"sums": read_sums(self._sums), "pairs": self._pairs}

    def set_window(self, window: dict | None) -> None:
        self._sums, self._pairs = (dict(window["sums"]), window["pairs"]) if window else ({}, 0)

    def take_metrics(self) -> dict[str, float]:
        """The metrics averaged over the pairs since the last call (this process's pairs)."""
        sums = read_sums(self._sums)
        out = {key: value / self._pairs for key, value in sums.items()} if self._pairs else {}
        self._sums, self._pairs = {}, 0
        return out
