"""GRPO in tunelab's own training loop (`train.method: grpo`): the rollout, the rewards and the loss of one
micro-batch of prompts, so LoRA, checkpoints, resume, trackers and the device paths are the fine-tuning ones.

A row is a prompt (`PromptRow`: the example's prompt tokens exactly as fine-tuning encodes them, and the
example itself, whose reference answer the rewards read). For each micro-batch the loop calls `rollout`:
1. each prompt is sampled `num_generations` times by tunelab's own decoding core (`decoding.embedded.decode_rows`
   with a SamplingParams and a seeded generator a row: batched, KV cache, the eval engine's stop tokens), the
   model in eval mode (no dropout) with its adapter on, under the training precision's autocast and SDPA
   attention (`model.attention.decoding_attention`). A row's generator is seeded from (recipe seed, step,
   process, micro-batch, row), so a resumed run samples exactly what the unbroken run did (`_draw`);
2. the completions are decoded and scored by the reward terms (`tunelab.eval.rewards`, handed in from above:
   train/ does not import the tasks); with `zero_variance: resample` the groups that all scored the same are
   sampled again (new seeds, up to `resample_rounds` times: `_settle_alike`, `_draw_again`);
3. advantages are normalised within each prompt's group (`grpo.group_advantages`), and with `zero_variance:
   skip` (or resample) the groups still all alike leave the batch;
4. the rows are laid out: one packed row a group, its prompt once (`grpo_groups`), where the model allows it,
   else as TRL lays them (`grpo.collate_completions`) (`_lay_out`); with `beta` > 0 the reference's
   log-probabilities are taken (`reference_logps`: the one reference switch, `model.reference`), and with
   `num_iterations` k > 1 the old policy's (`old_policy_logps`), kept while the batch is trained on
   at this step and the next k - 1 (the batch waits in `_buffer`, which every checkpoint holds).
Then `forward` computes the policy's log-probabilities with gradients and `grpo.grpo_loss` (on a fresh batch
the old policy is the policy itself, detached). Dropout is off (TRL's `disable_dropout: true`; TRL leaves it on
by default), as in DPO (`Method.disables_dropout`): with it, the KL to the reference would measure dropout noise.

How the loop's sums come out as TRL's: `grpo`, `bnpo` and `dr_grpo` are a micro-batch mean, so a micro-batch
counts one loss item and the step's loss is the mean over its micro-batches and processes; `dapo` counts
completion tokens, and its loss is the sum over the step's tokens divided by their number.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import torch

from tunelab.data.packing import batch_to
from tunelab.model.reference import reference_policy
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation
from tunelab.train.methods.grpo_loss import (GRPOLoss, collate_completions, completion_metrics, completion_token_logps,
                                             group_advantages, grpo_loss, sampler_ratio, zero_variance_groups)
from tunelab.train.methods.grpo_groups import backbone_and_head, pack_groups, packed_completion_logps
from tunelab.train.methods.own_samples import PromptRow, SamplingLossModel, prompts_batch, rollout

log = logging.getLogger(__name__)


@dataclass
class Drawn:
    """A micro-batch's groups as drawn: one entry a completion, prompt-major (the G completions of prompt 0, then
    those of prompt 1, …), each with its prompt, its example and its reward terms (`scores`, (completions, terms))."""

    prompts: list[list[int]]
    examples: list
    completions: list[list[int]]
    scores: torch.Tensor
    logps: list[list[float]] | None = None   # the sampler's own, where it is not the trainer (vLLM)


def policy_logps(model, parts, batch: dict, temperature: float = 1.0,
                 entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The log-probabilities of a batch's completion tokens under `model` as it is (B, C, fp32, 0 at padding), and
    their entropies: a packed batch (`grpo_groups.pack_groups`, `parts` its `backbone_and_head`) or a padded one
    (TRL's rows, `grpo_loss.completion_token_logps`). The loss's, the old policy's and the reference's alike."""
    from tunelab.model.kernels.rotary import fast_rotary
    with fast_rotary(model):
        if "predict_at" in batch:
            return packed_completion_logps(parts, batch, tuple(batch["completion_mask"].shape), temperature, entropy)
        return completion_token_logps(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                      batch["completion_mask"], temperature, entropy=entropy)


def old_policy_logps(model, parts, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """π_old: the policy's log-probabilities right after sampling, without gradients, kept while a batch is trained
    on more than once (`num_iterations` > 1; with one pass `grpo_loss` takes old = policy, detached)."""
    with torch.no_grad():
        return policy_logps(model, parts, batch, temperature)[0]


def reference_logps(model, parts, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """The reference's log-probabilities of the batch's completion tokens, for the KL term: under the one reference
    switch (`model.reference.reference_policy`: the adapter off, or a continued adapter as it started; eval mode,
    no gradients). A model without an adapter has none, and this raises."""
    with reference_policy(model):
        return policy_logps(model, parts, batch, temperature)[0]


class GRPOLossModel(SamplingLossModel):
    """What the loop calls forward on in a GRPO run (as `loss.LabelledLoss` in a fine-tuning one), with the
    rollout the loop calls first (`rollout`), and TRL's metrics for the loop's next metrics line."""

    def __init__(self, model: torch.nn.Module, settings, tokenizer, rewards, seed: int):
        super().__init__(model, settings, tokenizer, rewards, seed, key="grpo")
        self.spec = GRPOLoss(loss_type=settings.loss_type, beta=settings.beta, epsilon_low=settings.epsilon,
                             epsilon_high=settings.epsilon_high,
                             max_completion_length=settings.max_completion_length,
                             temperature=settings.temperature)
        self._buffer: dict[int, dict] = {}  # micro-batch -> its generation batch, while num_iterations > 1
        self.reserve: list[PromptRow] = []  # the run's prompts, which `zero_variance: refill` draws from
        self.parts = backbone_and_head(model)  # None: the padded layout (TRL's)

    def _reserve_row(self, step: int, rank: int, micro: int, group: int, again: int) -> PromptRow:
        """The prompt `zero_variance: refill` puts in place of a group that scored all alike: one of the run's
        prompts, drawn by a seed of the step, rank, micro-batch, group and try (a resumed run draws the same)."""
        if not self.reserve:
            raise RuntimeError("zero_variance refill needs the run's prompts (GRPOLossModel.reserve)")
        key = f"grpo-refill/{self.seed}/{step}/{rank}/{micro}/{group}/{again}"
        return self.reserve[zlib.crc32(key.encode()) % len(self.reserve)]

    def spread(self, rows: list[PromptRow], batch: int) -> list[bool]:
        """Whether each prompt's group, sampled from the policy as it is now, scores with a spread (some answers
        rewarded above others): the prompts `filter_prompts` keeps. `batch` prompts' groups at a time, each answer
        drawn by a seed of its prompt's place and its own (the same answers whatever the batch)."""
        G, keep = self.settings.num_generations, []
        for start in range(0, len(rows), batch):
            part = rows[start: start + batch]
            prompts = [r.prompt_ids for r in part for _ in range(G)]
            seeds = [zlib.crc32(f"grpo-filter/{self.seed}/{start + i // G}/{i % G}".encode())
                     for i in range(len(prompts))]
            scores = self._score([r.example for r in part for _ in range(G)],
                                 self._sample(prompts, seeds, 0).completions)
            keep += (~zero_variance_groups(scores.view(len(part), G, -1), self.rewards.weights)).tolist()
        return keep

    def rollout(self, rows: list[PromptRow], step: int, rank: int, micro: int, device) -> dict:
        """Sample, score and lay out one micro-batch of prompts: the batch `forward` takes, plus `items` (the
        loss items it holds: 1, or its completion tokens for `dapo`) and `tokens` (every token it trains on).
        With `num_iterations` k > 1, a generation batch is sampled at every k-th step and trained on k times:
        the steps between take it from the buffer, which a checkpoint keeps (`window`). The rows are laid out as
        `lay_out` said: packed, each group's prompt held once (`grpo_groups`) where the model allows it; flat,
        its rows laid end to end."""
        k = self.settings.num_iterations
        if k > 1 and step % k:
            if micro in self._buffer:
                return self._buffer[micro]
            # a checkpoint from before generation batches were kept in it: sample afresh, as a new batch
            log.warning(f"step {step + 1}: the checkpoint holds no generation batch for micro-batch {micro}; "
                        "sampled again from the current policy")
        batch = self._generate(rows, step, rank, micro, device)
        if k > 1 and "old_logps" not in batch:  # the old policy's, kept while the batch is trained on again (TRL's)
            batch["old_logps"] = old_policy_logps(self.model, self.parts, batch, self.spec.temperature)
            if micro == 0:
                self._buffer = {}
            self._buffer[micro] = batch
        return batch

    def _generate(self, rows: list[PromptRow], step: int, rank: int, micro: int, device) -> dict:
        """One generation batch: each prompt's group sampled and scored (`_draw`), its advantages, the groups that
        scored all alike drawn again or left out as `zero_variance` says (`_settle_alike`), the rest laid out
        (`_lay_out`), with the reference's log-probabilities where the loss has a KL term."""
        drawn = self._draw(rows, step, rank, micro)
        # the metrics are the first draw's: what the policy samples, whatever resampling then adds
        advantages, metrics = self._advantages(drawn.scores, len(rows))
        metrics.update(completion_metrics(drawn.completions, sorted(self.stops), self.pad_id))
        keep = torch.ones(len(rows), dtype=torch.bool)
        if self.settings.zero_variance != "keep":
            keep, redrawn = self._settle_alike(drawn, len(rows), step, rank, micro, metrics)
            if redrawn:  # groups were drawn again: their advantages are the new draws'
                advantages, _ = self._advantages(drawn.scores, len(rows))
        metrics["frac_groups_skipped"] = 1.0 - keep.float().mean()
        batch, tokens = self._lay_out(drawn, keep, advantages, device)
        sampler_logps = batch.pop("sampler_logps", None)
        if sampler_logps is not None and self.settings.sampler_correction != "none":
            # answers another engine drew: weighted by trainer / sampler at sampling time (TRL's, `sampler_ratio`)
            s = self.settings
            batch["old_logps"] = old_policy_logps(self.model, self.parts, batch, self.spec.temperature)
            batch["sampler_weights"], corrections = sampler_ratio(batch["old_logps"], sampler_logps,
                                                                  batch["completion_mask"], s.sampler_correction,
                                                                  s.sampler_clip_min, s.sampler_clip_max)
            metrics.update(corrections)
        if self.spec.needs_reference:
            batch["ref_logps"] = reference_logps(self.model, self.parts, batch, self.spec.temperature)
        self._add(metrics)
        items = int(batch["completion_mask"].sum()) if self.spec.loss_type == "dapo" else 1
        return {**batch, "items": items, "tokens": tokens}

    def _draw(self, rows: list[PromptRow], step: int, rank: int, micro: int) -> Drawn:
        """Each prompt's group of `num_generations` completions, sampled with the seeds of their places, scored."""
        G = self.settings.num_generations
        prompts = [r.prompt_ids for r in rows for _ in range(G)]
        examples = [r.example for r in rows for _ in range(G)]
        draws = self._sample(prompts, self._seeds(step, rank, micro, list(range(len(prompts)))), step)
        return Drawn(prompts, examples, draws.completions, self._score(examples, draws.completions), draws.logps)

    def _advantages(self, scores: torch.Tensor, groups: int) -> tuple[torch.Tensor, dict]:
        """(advantages (groups, G), the reward metrics) of the completions' reward terms (`group_advantages`)."""
        return group_advantages(scores.view(groups, self.settings.num_generations, -1), self.settings.scale_rewards,
                                self.rewards.weights, names=self.rewards.names)

    def _alike(self, scores: torch.Tensor, groups: int) -> torch.Tensor:
        """(groups,) bool: the groups whose completions all scored the same (`zero_variance_groups`)."""
        return zero_variance_groups(scores.view(groups, self.settings.num_generations, -1), self.rewards.weights)

    def _settle_alike(self, drawn: Drawn, groups: int, step: int, rank: int, micro: int,
                      metrics: dict) -> tuple[torch.Tensor, bool]:
        """(which groups to keep, whether any was drawn again) under `zero_variance` skip, resample or refill: a
        group that scored all alike teaches nothing; resample and refill draw it again (`_draw_again`, which changes
        `drawn`) and log the share drawn again and the share that then differed; what is still alike is left out."""
        mode = self.settings.zero_variance
        alike = self._alike(drawn.scores, groups)
        first = 0
        if mode in ("resample", "refill"):
            first = int(alike.sum())
            alike = self._draw_again(drawn, alike, step, rank, micro)
            metrics["frac_groups_resampled" if mode == "resample" else "frac_groups_refilled"] = first / groups
            metrics["frac_groups_rescued"] = (first - int(alike.sum())) / groups
        return ~alike, first > 0

    def _draw_again(self, drawn: Drawn, alike: torch.Tensor, step: int, rank: int, micro: int) -> torch.Tensor:
        """The groups that scored all alike drawn again with new seeds, up to `resample_rounds` times: the same
        prompt (resample) or another of the run's prompts for all G (refill, `_reserve_row`). `drawn` takes the new
        prompts, completions and scores; returns which groups are still alike."""
        G, refill = self.settings.num_generations, self.settings.zero_variance == "refill"
        for again in range(1, self.settings.resample_rounds + 1):
            redo = [g for g in range(len(alike)) if alike[g]]
            if not redo:
                break
            positions = [g * G + j for g in redo for j in range(G)]
            if refill:  # another prompt's group in its place, the same prompt for all G
                for g in redo:
                    fresh = self._reserve_row(step, rank, micro, g, again)
                    drawn.prompts[g * G: (g + 1) * G] = [fresh.prompt_ids] * G
                    drawn.examples[g * G: (g + 1) * G] = [fresh.example] * G
            draws = self._sample([drawn.prompts[i] for i in positions],
                                 self._seeds(step, rank, micro, positions, again), step)
            drawn.scores[positions] = self._score([drawn.examples[i] for i in positions], draws.completions)
            for j, i in enumerate(positions):
                drawn.completions[i] = draws.completions[j]
                if drawn.logps is not None:
                    drawn.logps[i] = draws.logps[j]
            alike = self._alike(drawn.scores, len(alike))
        return alike

    def _lay_out(self, drawn: Drawn, keep: torch.Tensor, advantages: torch.Tensor, device) -> tuple[dict, int]:
        """(the kept groups' completions as the batch `forward` takes, on `device`; the tokens TRL's rows of them
        hold): padded as TRL pads them (`collate_completions`), or packed, a group's prompt once (`pack_groups`).
        With no group kept, one group is, masked out, so the backward pass (and DDP) stays whole."""
        G = self.settings.num_generations
        kept = [i for i in range(len(drawn.prompts)) if keep[i // G]]
        empty = not kept
        if empty:  # nothing to learn from: one group, masked out, keeps the backward pass (and DDP) whole
            kept = list(range(G))
        prompts, completions = [drawn.prompts[i] for i in kept], [drawn.completions[i] for i in kept]
        batch = collate_completions(prompts, completions, self.pad_id, sorted(self.stops),
                                    self.settings.mask_truncated_completions)
        if empty:
            batch["completion_mask"].zero_()
        batch["advantages"] = advantages.reshape(-1)[kept]
        if drawn.logps is not None:  # the sampler's, laid out as the completions (NaN past each one's end)
            width = batch["completion_mask"].shape[1]
            batch["sampler_logps"] = torch.tensor([(drawn.logps[i] + [float("nan")] * width)[:width] for i in kept],
                                                  dtype=torch.float32)
        tokens = int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())  # as the rows TRL trains on
        if self.packed and self.parts is not None:  # the prompt once per group, no padding
            layout = pack_groups(prompts, completions, batch["completion_mask"], G, self.pad_id, self.flat)
            batch = {**layout, **{k: batch[k] for k in ("completion_mask", "advantages", "sampler_logps") if k in batch}}
        return batch_to(batch, device), tokens

    def forward(self, completion_mask, advantages, num_items_in_batch, ref_logps=None, old_logps=None,
                sampler_weights=None, items=None, tokens=None, **inputs) -> torch.Tensor:
        logps, entropies = policy_logps(self.model, self.parts, {**inputs, "completion_mask": completion_mask},
                                        self.spec.temperature, entropy=True)
        if self.spec.loss_type == "dapo":
            loss, metrics = grpo_loss(self.spec, logps, completion_mask, advantages, old_logps, ref_logps,
                                      num_items_in_batch, entropies, sampler_weights)
        else:  # a micro-batch mean; the loop's sum over micro-batches and processes divides by their number
            loss, metrics = grpo_loss(self.spec, logps, completion_mask, advantages, old_logps, ref_logps,
                                      entropies=entropies, sampler_weights=sampler_weights)
            loss = loss / num_items_in_batch
        self._add(metrics)
        return loss

    def window(self) -> dict:
        """What a checkpoint keeps of this process's loss module (`trainer_state.capture`): the sums since the
        last metrics line, and the generation batch still to be trained on (`num_iterations` > 1)."""
        held = {micro: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                for micro, batch in self._buffer.items()}
        return {**super().window(), "buffer": held}

    def set_window(self, window: dict | None) -> None:
        super().set_window(window)
        self._buffer = dict(window.get("buffer") or {}) if window else {}


def filter_prompts(run_dir, prompts: list[PromptRow], loss_model: GRPOLossModel, batch: int,
                   main: bool) -> list[PromptRow]:
    """`train.grpo.filter_prompts`: the prompts whose group, sampled from the starting policy, scores with a spread
    — neither all right nor all wrong, the prompts whose advantages are not all zero (DAPO's and PRIME's filter,
    once before training). The kept places are written into the run (`prompt_filter.json`), so a resumed run
    trains on the same prompts without sampling again."""
    import json

    from tunelab.errors import TunelabError
    from tunelab.records import read_json_object, write_json
    import hashlib
    s = loss_model.settings
    # what the verdicts depend on: a file of another set or setting (a setup that failed, then changed) is not used
    key = hashlib.sha256(json.dumps([[r.prompt_ids for r in prompts], loss_model.seed, s.num_generations,
                                     s.temperature, s.top_p, s.top_k, s.max_completion_length,
                                     loss_model.rewards.names]).encode()).hexdigest()[:16]
    path = run_dir / "prompt_filter.json"
    saved = read_json_object(path) if path.is_file() else {}
    if saved.get("key") == key:
        kept = saved["kept"]
    else:
        kept = [i for i, spread in enumerate(loss_model.spread(prompts, batch)) if spread]
        if main:
            write_json(path, {"key": key, "prompts": len(prompts), "kept": kept})
    if not kept:
        raise TunelabError(f"train.grpo.filter_prompts: the starting model's answers to all {len(prompts)} prompts "
                           "scored alike within each group (all right or all wrong): nothing is left to learn from "
                           "(use harder or easier prompts, or a higher temperature)", field="train.grpo.filter_prompts")
    log.info(f"filter_prompts: {len(kept):,} of {len(prompts):,} prompts kept ({100 * len(kept) / len(prompts):.0f} %: "
             "the starting model's answers to them differ in reward)")
    return [prompts[i] for i in kept]


# --- the method, as the loop sees it: a batch is prompts, the rollout makes it -------------------------------

def _grpo_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.errors import TunelabError
    if rewards is None:
        raise TunelabError("a grpo run is scored by its rewards: train it through tunelab.pipeline (tunelab run / "
                           "tunelab train), which builds them from train.grpo.rewards", field="train.grpo.rewards")
    return GRPOLossModel(model, recipe.train.grpo, tokenizer, rewards, recipe.seed)


GRPO = Method("grpo", prompts_batch, lambda batch: batch["items"], _grpo_loss, token_validation, rollout,
              lambda recipe: recipe.train.grpo.num_iterations, disables_dropout=True)
