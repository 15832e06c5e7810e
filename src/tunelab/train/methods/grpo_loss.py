"""GRPO's math, as pure functions: group-normalised advantages from rewards, the clipped policy-gradient loss
(`grpo`, `bnpo`, `dr_grpo`, `dapo`) with its KL term, and the numbers TRL logs. No sampling and no training
loop here: the loop generates `num_generations` completions per prompt, scores them (`tunelab.eval.rewards`),
and calls these.

The shapes. A batch holds B completion rows, prompt-major: the G completions of prompt 0, then those of prompt
1, … (TRL's `RepeatSampler` order). `collate_completions` pads them as TRL does (prompts on the left,
completions on the right); `completion_token_logps` gives each completion token's log-probability under the model,
(B, C), 0 where the completion is padding. Taken without gradients right after sampling, before the policy
moves, they are the old policy's, kept while a batch is trained on more than once (`num_iterations` > 1); under
the reference switch (`model.reference.reference_policy`: the LoRA adapter off) they are the reference's
(`grpo.old_policy_logps`, `grpo.reference_logps`, for either layout of the batch).

Advantages (DeepSeekMath, Shao et al. 2024, §4.1.2 "outcome supervision"): each completion's reward minus the
mean reward of its prompt's group, divided by a standard deviation chosen by `scale_rewards`:
- `group` (TRL's default, also `True`): the group's own std (Bessel-corrected), + 1e-4;
- `batch`: the std over the whole batch (PPO-Lite, Liu et al. 2025, arXiv 2508.08221);
- `none` (also `False`): no division (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783: dividing by the group's std
  up-weights questions that are too easy or too hard).
With several reward terms (task, format, length, …), `aggregation` says whether they are summed with their
weights and then normalised (`sum_then_normalize`, TRL's default) or each normalised within its group, summed
with the weights and the sum normalised over the batch (`normalize_then_sum`, GDPO, arXiv 2601.05242).
A group whose rewards are all equal has advantage 0 for every completion: it teaches nothing
(`zero_variance_groups` finds them, for DAPO's dynamic sampling).

The loss, per completion token t of row i, with r = π(t)/π_old(t) (1 in value when the batch is fresh,
but it carries the gradient) and A_i the row's advantage:
    ℓ_it = −min(r·A_i, clip(r, 1 − ε_low, 1 + ε_high)·A_i) + β·KL_it
(PPO's clipped surrogate, Schulman et al. 2017; ε_high > ε_low is DAPO's "clip-higher", Yu et al. 2025,
arXiv 2503.14476; `delta` caps r from above as INTELLECT-2 does, arXiv 2505.07291). KL_it is Schulman's k3
estimator of KL(π‖π_ref), exp(ref − logp) − (ref − logp) − 1, multiplied by r when `kl_bias_correction`
(TRL's `use_bias_correction_kl`, default on: DeepSeek-V3.2's unbiased estimator; it changes the gradient
even on a fresh batch). β = 0 drops the term, and no reference is computed at all. The loss types differ only
in how the ℓ_it are averaged (m = the completion mask):
- `grpo` (DeepSeekMath): each row's mean over its tokens, then the mean over rows. Biased by length: a short
  right answer gets more gradient per token than a long one.
- `bnpo`: the sum over the batch's tokens / the batch's token count.
- `dr_grpo` (Dr. GRPO): the sum over the batch's tokens / (rows × `max_completion_length`), a constant.
- `dapo` (DAPO, TRL's default): the sum / the number of completion tokens in the whole optimizer step
  (`num_items_in_batch`; this micro-batch's own count when not given).
`importance_sampling_level="sequence"` (GSPO, arXiv 2507.18071) uses each row's mean log-ratio for r.

All of it is TRL 1.16's `GRPOTrainer` (trl/trainer/grpo_trainer.py): `_generate_and_score_completions` for the
advantages and reward metrics, `_compute_loss` for the loss and its metrics, `_get_per_token_logps_and_entropies`
for the log-probabilities, `_generate` for the completion-length metrics. `tests/test_grpo_loss.py` checks
advantages, log-probabilities, loss, metrics and the adapter's gradients against that trainer itself.
What TRL has and this does not: the `cispo`, `sapo`, `luspo`, `vespo` losses, the entropy bonus and
`top_entropy_quantile` mask, the off-policy sequence mask, vLLM importance-sampling correction, tool masks.

Accumulation (how TRL scales a micro-batch's loss, for the loop; `tests/test_grpo_loss.py` checks it with two
micro-batches): `grpo`, `bnpo` and `dr_grpo` return a micro-batch average, which TRL divides by the
accumulation steps and DDP then averages over processes; tunelab's loop multiplies every micro-batch's loss by
the world size (DDP's average becomes a sum), so there it is divided by accumulation steps × world size.
`dapo` returns its share of the step's mean when `num_items_in_batch` is the step's completion tokens summed
over micro-batches and processes, and needs no further scaling in tunelab's loop. (When one generation batch
feeds several optimizer steps, TRL divides by that batch's tokens per step on average, not each step's own.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunelab.model.kernels.logprobs import scored_logps
from tunelab.recipe.train import GRPO_LOSSES, SAMPLER_CORRECTIONS, SCALE_REWARDS

AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
STD_EPSILON = 1e-4  # TRL's: advantages / (std + 1e-4)


def resolve_scale_rewards(value: str | bool) -> str:
    """TRL's `scale_rewards` values: True is "group", False is "none" (`GRPOConfig.__post_init__`)."""
    value = {True: "group", False: "none"}.get(value, value)  # type: ignore[arg-type]
    if value not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {value!r} is not one of {', '.join(SCALE_REWARDS)} (or true / false)")
    return value


@dataclass(frozen=True)
class GRPOLoss:
    """The loss's settings, named as TRL's `GRPOConfig` fields (`epsilon_low` is TRL's `epsilon`), defaults as
    TRL 1.16's. `epsilon_high` None: the same as `epsilon_low`. `max_completion_length` is `dr_grpo`'s
    constant. `temperature` divides the logits before the log-probabilities, as TRL scores completions sampled
    at that temperature."""

    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    max_completion_length: int = 512
    importance_sampling_level: str = "token"
    kl_bias_correction: bool = True
    temperature: float = 1.0

    def __post_init__(self):
        if self.loss_type not in GRPO_LOSSES:  # the recipe checked its own: this is a caller's in Python
            raise ValueError(f"loss type {self.loss_type!r} is not one of {', '.join(GRPO_LOSSES)}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance sampling level {self.importance_sampling_level!r} is not one of "
                             f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}")
        if self.epsilon_high is None:
            object.__setattr__(self, "epsilon_high", self.epsilon_low)
        if self.beta < 0 or self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError("beta, epsilon_low and epsilon_high must be >= 0")
        if self.max_completion_length < 1 or self.temperature <= 0:
            raise ValueError("max_completion_length must be >= 1 and temperature > 0")

    @property
    def needs_reference(self) -> bool:
        return self.beta != 0.0


# --- advantages -----------------------------------------------------------------------------------

def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The Bessel-corrected standard deviation ignoring NaNs, NaN with fewer than two values (TRL's
    `trl.trainer.utils.nanstd`)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    std = torch.sqrt(variance * correction)
    return std if keepdim else (std.squeeze(dim) if dim is not None else std.reshape(()))


def _per_term(rewards: torch.Tensor) -> torch.Tensor:
    """(prompts, G) or (prompts, G, terms) → (prompts, G, terms), float32."""
    if rewards.dim() == 2:
        rewards = rewards.unsqueeze(-1)
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be (prompts, generations) or (prompts, generations, terms), "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.float()


def _weights(weights, terms: int, device) -> torch.Tensor:
    if weights is None:
        return torch.ones(terms, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if w.shape != (terms,):
        raise ValueError(f"{terms} reward terms but {w.numel()} weights")
    return w


def weighted_rewards(rewards: torch.Tensor, weights=None) -> torch.Tensor:
    """Each completion's total reward, (prompts, G): the terms times their weights, summed ignoring NaN (a term
    that does not apply); NaN where no term applies (TRL's unscorable completion)."""
    per_term = _per_term(rewards)
    total = (per_term * _weights(weights, per_term.shape[-1], per_term.device)).nansum(-1)
    return total.masked_fill(torch.isnan(per_term).all(-1), float("nan"))


def zero_variance_groups(rewards: torch.Tensor, weights=None) -> torch.Tensor:
    """(prompts,) bool: the groups whose completions all got the same total reward (or fewer than two that
    could be scored). Their advantages are 0 under every `scale_rewards`, so they add nothing but the KL term:
    the ones DAPO's dynamic sampling drops and resamples."""
    std = nanstd(weighted_rewards(rewards, weights), dim=1)
    return torch.isclose(std, torch.zeros_like(std)) | torch.isnan(std)


def group_advantages(rewards: torch.Tensor, scale_rewards: str | bool = "group", weights=None,
                     aggregation: str = "sum_then_normalize", names: list[str] | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """(advantages (prompts, G), TRL's reward metrics) from rewards (prompts, G) or, with several terms,
    (prompts, G, terms) and their `weights` (default 1 each). NaN is a term that does not apply to a
    completion; a completion no term applies to gets advantage 0. `names` labels the terms' metrics
    (`rewards/{name}/mean`, `…/std`). Flatten the advantages (`.reshape(-1)`) for the batch's rows.

    TRL 1.16 `GRPOTrainer._generate_and_score_completions` (one process, a whole generation batch)."""
    scale = resolve_scale_rewards(scale_rewards)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    per_term = _per_term(rewards)
    prompts, G, terms = per_term.shape
    w = _weights(weights, terms, per_term.device)
    flat = per_term.reshape(prompts * G, terms)
    unscorable = torch.isnan(flat).all(dim=1)
    if aggregation == "sum_then_normalize":
        total = (flat * w).nansum(dim=1).masked_fill(unscorable, float("nan"))
        grouped = total.view(prompts, G)
        mean = torch.nanmean(grouped, dim=1).repeat_interleave(G)
        if scale == "batch":
            std = nanstd(total).expand_as(total) if total.numel() > 1 else torch.zeros_like(total)
        else:  # "none" still needs the group's std: frac_reward_zero_std is logged from it
            std = nanstd(grouped, dim=1).repeat_interleave(G) if G > 1 else torch.zeros_like(total)
        advantages = total - mean
        if scale != "none":
            advantages = advantages / (std + STD_EPSILON)
    else:  # normalize_then_sum: each term within its group, the weighted sum over the batch
        grouped = flat.view(prompts, G, terms)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True) if G > 1 else torch.zeros_like(mean_k)
        normalised = ((grouped - mean_k) / (std_k + STD_EPSILON)).view(-1, terms)
        total = (normalised * w).nansum(dim=1).masked_fill(unscorable, float("nan"))
        std = nanstd(total).expand_as(total) if total.numel() > 1 else torch.zeros_like(total)
        advantages = (total - torch.nanmean(total)) / (std + STD_EPSILON)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    advantages = torch.nan_to_num(advantages, nan=0.0)

    logged = (flat * w).nansum(dim=1).masked_fill(unscorable, float("nan"))
    metrics = {}
    for i in range(terms):
        name = names[i] if names else f"reward_{i}"
        metrics[f"rewards/{name}/mean"] = torch.nanmean(flat[:, i]).item()
        metrics[f"rewards/{name}/std"] = nanstd(flat[:, i]).item()
    metrics.update({"reward": torch.nanmean(logged).item(), "reward_std": nanstd(logged).item(),
                    "frac_reward_zero_std": is_std_zero.float().mean().item()})
    return advantages.view(prompts, G), metrics


# --- the batch and its log-probabilities ----------------------------------------------------------

def collate_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                        stop_ids: list[int] | None = None, mask_truncated: bool = False
                        ) -> dict[str, torch.Tensor]:
    """One row per completion, as TRL pads them: the prompts on the left (`prompt_ids`, `prompt_mask`), the
    completions on the right (`completion_ids`, `completion_mask`). With `mask_truncated` (TRL's
    `mask_truncated_completions`, DAPO's overlong filtering) a completion that did not end with a stop token
    (`stop_ids`: EOS, end of turn) or the pad has its whole mask zeroed: it is neither attended to nor trained on.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(completion_ids)} completions")
    rows = len(prompt_ids)
    p_width = max(len(p) for p in prompt_ids)
    c_width = max(1, max(len(c) for c in completion_ids))
    out = {"prompt_ids": torch.full((rows, p_width), pad_id, dtype=torch.long),
           "prompt_mask": torch.zeros((rows, p_width), dtype=torch.long),
           "completion_ids": torch.full((rows, c_width), pad_id, dtype=torch.long),
           "completion_mask": torch.zeros((rows, c_width), dtype=torch.long)}
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if p:
            out["prompt_ids"][i, p_width - len(p):] = torch.tensor(p)
            out["prompt_mask"][i, p_width - len(p):] = 1
        if c:
            out["completion_ids"][i, :len(c)] = torch.tensor(c)
            out["completion_mask"][i, :len(c)] = 1
    if mask_truncated:
        ends = set(stop_ids or []) | {pad_id}
        truncated = torch.tensor([not c or c[-1] not in ends for c in completion_ids])
        out["completion_mask"] *= (~truncated).unsqueeze(1).long()
    return out


def completion_token_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float = 1.0, entropy: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(token) of every completion token, (B, C), in fp32 and 0 at padding; the entropy of the
    distribution it was drawn from, (B, C), or None). The logits are divided by `temperature` first, as TRL's
    `_get_per_token_logps_and_entropies` does (through its fused LM head); here only the completion positions are
    projected onto the vocabulary, a chunk at a time (`model.kernels.logprobs`)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    width = completion_ids.shape[1]
    scored = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool, device=input_ids.device)
    scored[:, -width:] = completion_mask.bool()
    logps, entropies = scored_logps(model, input_ids, scored, temperature, entropy, attention_mask=attention_mask)
    return logps[:, -width:], (entropies[:, -width:] if entropies is not None else None)


# --- the loss -------------------------------------------------------------------------------------

def sampler_ratio(old_logps: torch.Tensor, sampler_logps: torch.Tensor, completion_mask: torch.Tensor,
                  mode: str = "sequence_mask", clip_min: float | None = None, clip_max: float | None = 3.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weight that corrects a loss for answers drawn by another engine (vLLM) than the one that trains: the
    ratio π_trainer / π_sampler of the drawn tokens, (B, C) per token or (B, 1) per answer, and TRL's
    `sampling/*` metrics. `old_logps`: the trainer's log-probabilities at sampling time (no gradient);
    `sampler_logps`: the sampler's of the same tokens (NaN where it gave none: ratio 1 there). `*_truncate`
    clips the ratio to [clip_min, clip_max] (truncated importance sampling); `*_mask` sets it to 0 outside
    them (the token, or the whole answer, is not trained on).

    TRL 1.16 `GRPOTrainer._generate_and_score_completions` (`vllm_importance_sampling_mode`, its default
    `sequence_mask` with clip_max 3), tests/test_grpo_sampler_ratio.py."""
    if mode not in SAMPLER_CORRECTIONS or mode == "none":
        raise ValueError(f"sampler correction {mode!r} is not one of {', '.join(SAMPLER_CORRECTIONS[:-1])}")
    mask = completion_mask.to(old_logps.dtype)
    diff = torch.nan_to_num((old_logps - sampler_logps) * mask, nan=0.0)
    sequence = mode.startswith("sequence")
    ratio = torch.exp(diff.sum(-1, keepdim=True) if sequence else diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    with torch.no_grad():
        delta = torch.abs(old_logps - sampler_logps)
        seen = completion_mask.bool() & ~torch.isnan(delta)
        flat = ratio.flatten() if sequence else ratio[completion_mask.bool()]
        zero = torch.zeros((), dtype=old_logps.dtype, device=old_logps.device)
        metrics = {"sampling/sampling_logp_difference/mean": delta[seen].mean() if seen.any() else zero,
                   "sampling/sampling_logp_difference/max": delta[seen].max() if seen.any() else zero,
                   "sampling/importance_sampling_ratio/min": flat.min() if flat.numel() else zero,
                   "sampling/importance_sampling_ratio/mean": flat.mean() if flat.numel() else zero,
                   "sampling/importance_sampling_ratio/max": flat.max() if flat.numel() else zero}
    return ratio, metrics


def grpo_loss(spec: GRPOLoss, logps: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor,
              old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
              num_items_in_batch: int | torch.Tensor | None = None, entropies: torch.Tensor | None = None,
              sampler_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the micro-batch's loss, TRL's metrics for it as 0-d tensors, read once a metrics line) from the policy's completion log-probabilities `logps`
    (B, C; with gradients), the `completion_mask` (B, C), each row's advantage (B,), the old policy's
    log-probabilities (None: this batch's first pass, old = logps detached, as TRL), the reference's (needed
    when β ≠ 0), the step's completion-token count for `dapo` (see the module docstring), the entropies
    for the `entropy` metric, and `sampler_weights` (`sampler_ratio`: answers drawn by another engine), which
    multiply the clipped objective's token losses before the KL term is added, as TRL's.

    TRL 1.16 `GRPOTrainer._compute_loss`, for its loss types grpo, bnpo, dr_grpo and dapo."""
    mask = completion_mask.to(logps.dtype)
    advantages = advantages.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    old_logps = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old_logps
    if spec.importance_sampling_level == "token":
        log_weights = log_ratio
    else:  # sequence: each row's mean log-ratio (GSPO)
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_weights)

    if spec.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference's log-probabilities")
        per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if spec.kl_bias_correction:
            per_token_kl = per_token_kl * ratio

    clipped = torch.clamp(ratio, 1 - spec.epsilon_low, 1 + spec.epsilon_high)
    unclipped = ratio if spec.delta is None else torch.clamp(ratio, max=spec.delta)
    per_token_loss = -torch.min(unclipped * advantages, clipped * advantages)
    if sampler_weights is not None:
        per_token_loss = per_token_loss * sampler_weights
    if spec.beta != 0.0:
        per_token_loss = per_token_loss + spec.beta * per_token_kl

    if spec.loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif spec.loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif spec.loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * spec.max_completion_length)
    else:  # dapo
        items = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=mask.dtype)
        loss = (per_token_loss * mask).sum() / items.clamp(min=1.0)

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # one value per row (sequence-level importance sampling)
            return x.sum() / x.shape[0]
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    def row_means(x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    with torch.no_grad():
        metrics = {}
        if spec.beta != 0.0:
            metrics["kl"] = masked_mean(per_token_kl)
        if entropies is not None:
            metrics["entropy"] = masked_mean(entropies)
        low = ((ratio < 1 - spec.epsilon_low) & (advantages < 0)).float()
        high = ((ratio > 1 + spec.epsilon_high) & (advantages > 0)).float()
        metrics["clip_ratio/low_mean"] = masked_mean(low)
        metrics["clip_ratio/high_mean"] = masked_mean(high)
        metrics["clip_ratio/region_mean"] = masked_mean(torch.maximum(low, high))
        low_rows, high_rows = row_means(low), row_means(high)  # NaN for a row without tokens, skipped
        metrics["clip_ratio/low_min"] = _extreme(low_rows, torch.amin)
        metrics["clip_ratio/high_max"] = _extreme(high_rows, torch.amax)
    return loss, metrics


def _extreme(rows: torch.Tensor, pick) -> torch.Tensor:
    """`pick` (amin or amax) of the rows' values that are not NaN, NaN when none is: decided on the device (a
    boolean index would make the host wait to learn its size)."""
    fill = float("inf") if pick is torch.amin else float("-inf")
    value = pick(torch.where(torch.isnan(rows), torch.full_like(rows, fill), rows))
    return torch.where(torch.isinf(value), torch.full_like(value, float("nan")), value)


def completion_metrics(completion_ids: list[list[int]], stop_ids: list[int], pad_id: int) -> dict[str, float]:
    """TRL's completion-length metrics (`GRPOTrainer._generate`): mean/min/max length in tokens, the share that
    did not end with a stop token or the pad (`clipped_ratio`: cut at the length limit), and the lengths of
    those that did end (0 when none did)."""
    if not completion_ids:
        raise ValueError("no completions")
    lengths = torch.tensor([len(c) for c in completion_ids], dtype=torch.float32)
    ends = set(stop_ids) | {pad_id}
    truncated = torch.tensor([not c or c[-1] not in ends for c in completion_ids])
    ended = lengths[~truncated] if (~truncated).any() else torch.zeros(1)
    return {"completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": truncated.float().mean().item(),
            "completions/mean_terminated_length": ended.mean().item(),
            "completions/min_terminated_length": ended.min().item(),
            "completions/max_terminated_length": ended.max().item()}

