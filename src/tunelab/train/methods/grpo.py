"""GRPO in tunelab's own training loop (`train.method: grpo`): the rollout, the rewards and the loss of one
micro-batch of prompts, so LoRA, checkpoints, resume, trackers and the device paths are the fine-tuning ones.

A row is a prompt (`PromptRow`: the example's prompt tokens exactly as fine-tuning encodes them, and the
example itself, whose reference answer the rewards read). For each micro-batch the loop calls `rollout`:
1. each prompt is sampled `num_generations` times by tunelab's own decoding core (`decoding.generate.decode_rows`
   with a SamplingParams and a seeded generator a row: batched, KV cache, the eval engine's stop tokens), the
   model in eval mode (no dropout) with its adapter on, under the training precision's autocast and SDPA
   attention (`model.attention.decoding_attention`). A row's generator is seeded from (recipe seed, step,
   process, micro-batch, row), so a resumed run samples exactly what the unbroken run did;
2. the completions are decoded and scored by the reward terms (`tunelab.eval.rewards`, handed in from above:
   train/ does not import the tasks); with `zero_variance: resample` the groups that all scored the same are
   sampled again (new seeds, up to `resample_rounds` times);
3. advantages are normalised within each prompt's group (`grpo.group_advantages`), and with `zero_variance:
   skip` (or resample) the groups still all alike leave the batch;
4. the rows are laid out: one packed row a group, its prompt once (`grpo_groups`), where the model allows it,
   else as TRL lays them (`grpo.collate_completions`); with `beta` > 0 the reference's log-probabilities are
   taken (the adapter off), and with `num_iterations` k > 1 the old policy's, kept while the batch is trained on
   at this step and the next k - 1 (the batch waits in `_buffer`, which every checkpoint holds).
Then `forward` computes the policy's log-probabilities with gradients and `grpo.grpo_loss` (on a fresh batch
the old policy is the policy itself, detached). Dropout is off (TRL's `disable_dropout: true`; TRL leaves it on
by default), as in DPO: with it, the KL to the reference would measure dropout noise.

How the loop's sums come out as TRL's: `grpo`, `bnpo` and `dr_grpo` are a micro-batch mean, so a micro-batch
counts one loss item and the step's loss is the mean over its micro-batches and processes; `dapo` counts
completion tokens, and its loss is the sum over the step's tokens divided by their number.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import torch

from tunelab.data.examples import Example
from tunelab.data.packing import batch_to
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, read_sums, token_validation
from tunelab.train.methods.grpo_loss import (GRPOLoss, as_reference, collate_completions, completion_logps, completion_metrics,
                                grpo_loss, group_advantages, zero_variance_groups)
from tunelab.train.methods.grpo_groups import backbone_and_head, pack_groups, packed_completion_logps

log = logging.getLogger(__name__)


@dataclass
class PromptRow:
    """A prompt to sample answers to: its tokens as fine-tuning encodes them, and its example."""

    prompt_ids: list[int]
    example: Example

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids

    @property
    def sample_tokens(self) -> int:
        return len(self.prompt_ids)


def prompt_rows(recipe, examples: list[Example], tokenizer, template) -> tuple[list[PromptRow], int]:
    """(a row per example, how many prompts were cut to fit `data.max_seq_len` less the completion's room)."""
    from tunelab.data.packing import IGNORE, encode_examples
    from tunelab.errors import TunelabError
    room = recipe.data.max_seq_len - recipe.train.grpo.max_completion_length
    if room < 8:
        raise TunelabError(f"data.max_seq_len {recipe.data.max_seq_len} leaves {room} tokens for a prompt after "
                           f"{recipe.train.grpo.max_completion_length} of completion", field="data.max_seq_len")
    rows, cut = [], 0
    # the prompt is everything before the last assistant turn (earlier turns of a conversation included)
    encoded_all = encode_examples(tokenizer, template, examples, recipe.data.max_seq_len, "last_turn")
    for example, encoded in zip(examples, encoded_all):
        answer = next((i for i, label in enumerate(encoded.labels) if label != IGNORE), len(encoded.labels))
        prompt = encoded.input_ids[:answer]
        if len(prompt) > room:
            prompt, cut = prompt[-room:], cut + 1
        rows.append(PromptRow(prompt, example))
    return rows, cut


class GRPOLossModel(torch.nn.Module):
    """What the loop calls forward on in a GRPO run (as `loss.LabelledLoss` in a fine-tuning one), with the
    rollout the loop calls first (`rollout`), and TRL's metrics for the loop's next metrics line."""

    def __init__(self, model: torch.nn.Module, settings, tokenizer, rewards, seed: int):
        super().__init__()
        from tunelab.decoding.sampling import SamplingParams
        from tunelab.decoding.stops import pad_token_id, stop_token_ids
        self.model, self.settings, self.tokenizer, self.rewards, self.seed = model, settings, tokenizer, rewards, seed
        for module in model.modules():  # as TRL's `disable_dropout: true`: the samples, the policy's log-probs and
            if isinstance(module, torch.nn.Dropout):  # the reference's are of one model, not three noisy ones
                module.p = 0.0
        self.spec = GRPOLoss(loss_type=settings.loss_type, beta=settings.beta, epsilon_low=settings.epsilon,
                             epsilon_high=settings.epsilon_high,
                             max_completion_length=settings.max_completion_length,
                             temperature=settings.temperature)
        self.stops = stop_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, self.stops)
        self.sampling = SamplingParams(max_tokens=settings.max_completion_length, temperature=settings.temperature,
                                       top_p=settings.top_p, top_k=settings.top_k)
        self._sums: dict[str, tuple] = {}  # metric -> (sum, count): 0-d tensors on the device until read
        self._buffer: dict[int, dict] = {}  # micro-batch -> its generation batch, while num_iterations > 1
        self.reserve: list[PromptRow] = []  # the run's prompts, which `zero_variance: refill` draws from
        self.parts = backbone_and_head(model)  # None: the padded layout (TRL's)

    def _generators(self, step: int, rank: int, micro: int, rows: list[int], again: int = 0) -> list[torch.Generator]:
        def seed(row: int) -> int:
            key = f"grpo/{self.seed}/{step}/{rank}/{micro}/{row}" + (f"/again{again}" if again else "")
            return zlib.crc32(key.encode())
        return [torch.Generator().manual_seed(seed(r)) for r in rows]

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
            generators = [torch.Generator().manual_seed(zlib.crc32(f"grpo-filter/{self.seed}/{start + i // G}/"
                                                                   f"{i % G}".encode())) for i in range(len(prompts))]
            scores = self._score([r.example for r in part for _ in range(G)], self._sample(prompts, generators))
            keep += (~zero_variance_groups(scores.view(len(part), G, -1), self.rewards.weights)).tolist()
        return keep

    def _sample(self, prompts: list[list[int]], generators: list[torch.Generator]) -> list[list[int]]:
        from tunelab.model.kernels.attention import decoding_attention
        from tunelab.decoding.generate import decode_rows
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), decoding_attention(self.model):
                completions, _ = decode_rows(self.model, prompts, self.settings.max_completion_length, self.stops,
                                             self.pad_id, len(prompts), sampling=[self.sampling] * len(prompts),
                                             generators=generators, keep_stop=True)
        finally:
            self.model.train(was_training)
        return completions

    def _score(self, examples: list[Example], completions: list[list[int]]) -> torch.Tensor:
        texts = self.tokenizer.batch_decode([[t for t in c if t not in self.stops] for c in completions],
                                            skip_special_tokens=True)
        prompt_texts = [e.instruction if not e.input else f"{e.instruction}\n{e.input}" for e in examples]
        return torch.tensor(self.rewards.score(prompt_texts, texts, examples, completions), dtype=torch.float32)

    def rollout(self, rows: list[PromptRow], step: int, rank: int, micro: int, device, packed: bool = False,
                flat: bool = False) -> dict:
        """Sample, score and lay out one micro-batch of prompts: the batch `forward` takes, plus `items` (the
        loss items it holds: 1, or its completion tokens for `dapo`) and `tokens` (every token it trains on).
        With `num_iterations` k > 1, a generation batch is sampled at every k-th step and trained on k times:
        the steps between take it from the buffer, which a checkpoint keeps (`window`). `packed`: each group's
        prompt held once (`grpo_groups`), where the model allows it; `flat`: its rows laid end to end."""
        k = self.settings.num_iterations
        if k > 1 and step % k:
            if micro in self._buffer:
                return self._buffer[micro]
            # a checkpoint from before generation batches were kept in it: sample afresh, as a new batch
            log.warning(f"step {step + 1}: the checkpoint holds no generation batch for micro-batch {micro}; "
                        "sampled again from the current policy")
        batch = self._generate(rows, step, rank, micro, device, packed, flat)
        if k > 1:  # the old policy's log-probabilities, kept while the batch is trained on again (TRL's)
            with torch.no_grad():
                batch["old_logps"] = self._logps(batch)[0]
            if micro == 0:
                self._buffer = {}
            self._buffer[micro] = batch
        return batch

    def _generate(self, rows: list[PromptRow], step: int, rank: int, micro: int, device, packed: bool,
                  flat: bool) -> dict:
        G = self.settings.num_generations
        prompts = [r.prompt_ids for r in rows for _ in range(G)]
        examples = [r.example for r in rows for _ in range(G)]
        completions = self._sample(prompts, self._generators(step, rank, micro, list(range(len(prompts)))))
        scores = self._score(examples, completions)
        groups = lambda s: s.view(len(rows), G, -1)  # noqa: E731
        # the metrics are the first draw's: what the policy samples, whatever resampling then adds
        advantages, metrics = group_advantages(groups(scores), self.settings.scale_rewards, self.rewards.weights,
                                               names=self.rewards.names)
        metrics.update(completion_metrics(completions, sorted(self.stops), self.pad_id))
        keep = torch.ones(len(rows), dtype=torch.bool)
        mode = self.settings.zero_variance
        if mode != "keep":
            alike = zero_variance_groups(groups(scores), self.rewards.weights)
            if mode in ("resample", "refill"):
                first = int(alike.sum())
                for again in range(1, self.settings.resample_rounds + 1):
                    redo = [g for g in range(len(rows)) if alike[g]]
                    if not redo:
                        break
                    positions = [g * G + j for g in redo for j in range(G)]
                    if mode == "refill":  # another prompt's group in its place, the same prompt for all G
                        for g in redo:
                            fresh = self._reserve_row(step, rank, micro, g, again)
                            prompts[g * G: (g + 1) * G] = [fresh.prompt_ids] * G
                            examples[g * G: (g + 1) * G] = [fresh.example] * G
                    drawn = self._sample([prompts[i] for i in positions],
                                         self._generators(step, rank, micro, positions, again))
                    scores[positions] = self._score([examples[i] for i in positions], drawn)
                    for i, c in zip(positions, drawn):
                        completions[i] = c
                    alike = zero_variance_groups(groups(scores), self.rewards.weights)
                if first:  # groups were drawn again: their advantages are the new draws'
                    advantages, _ = group_advantages(groups(scores), self.settings.scale_rewards,
                                                     self.rewards.weights, names=self.rewards.names)
                metrics["frac_groups_resampled" if mode == "resample" else "frac_groups_refilled"] = first / len(rows)
                metrics["frac_groups_rescued"] = (first - int(alike.sum())) / len(rows)
            keep = ~alike
        metrics["frac_groups_skipped"] = 1.0 - keep.float().mean()
        kept = [i for i in range(len(prompts)) if keep[i // G]]
        empty = not kept
        if empty:  # nothing to learn from: one group, masked out, keeps the backward pass (and DDP) whole
            kept = list(range(G))
        kept_prompts, kept_completions = [prompts[i] for i in kept], [completions[i] for i in kept]
        batch = collate_completions(kept_prompts, kept_completions, self.pad_id, sorted(self.stops),
                                    self.settings.mask_truncated_completions)
        if empty:
            batch["completion_mask"].zero_()
        batch["advantages"] = advantages.reshape(-1)[kept]
        tokens = int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())  # as the rows TRL trains on
        if packed and self.parts is not None:  # the prompt once per group, no padding
            layout = pack_groups(kept_prompts, kept_completions, batch["completion_mask"], G, self.pad_id, flat)
            batch = {**layout, "completion_mask": batch["completion_mask"], "advantages": batch["advantages"]}
        batch = batch_to(batch, device)
        if self.spec.needs_reference:
            batch["ref_logps"] = self._reference_logps(batch)
        self._add(metrics)
        items = int(batch["completion_mask"].sum()) if self.spec.loss_type == "dapo" else 1
        return {**batch, "items": items, "tokens": tokens}

    def _logps(self, batch: dict, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy's log-probabilities of the batch's completion tokens (B, C), and their entropies."""
        from tunelab.model.kernels.rotary import fast_rotary
        with fast_rotary(self.model):
            if "predict_at" in batch:
                return packed_completion_logps(self.parts, batch, tuple(batch["completion_mask"].shape),
                                               self.spec.temperature, entropy)
            return completion_logps(self.model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                    batch["completion_mask"], self.spec.temperature, entropy=entropy)

    def _reference_logps(self, batch: dict) -> torch.Tensor:
        return as_reference(self.model, lambda: self._logps(batch)[0])

    def forward(self, completion_mask, advantages, num_items_in_batch, ref_logps=None, old_logps=None,
                items=None, tokens=None, **inputs) -> torch.Tensor:
        logps, entropies = self._logps({**inputs, "completion_mask": completion_mask}, entropy=True)
        if self.spec.loss_type == "dapo":
            loss, metrics = grpo_loss(self.spec, logps, completion_mask, advantages, old_logps, ref_logps,
                                      num_items_in_batch, entropies)
        else:  # a micro-batch mean; the loop's sum over micro-batches and processes divides by their number
            loss, metrics = grpo_loss(self.spec, logps, completion_mask, advantages, old_logps, ref_logps,
                                      entropies=entropies)
            loss = loss / num_items_in_batch
        self._add(metrics)
        return loss

    def _add(self, metrics: dict) -> None:
        """Metrics are averaged over the micro-batches since the last metrics line (rollout and loss each add
        theirs once a micro-batch); a NaN (a clip-ratio extreme with no token) is left out. A tensor stays on the
        device until the line is written (`take_metrics`)."""
        for key, value in metrics.items():
            total, n = self._sums.get(key, (0.0, 0))
            if isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float64)
                seen = (~torch.isnan(value)).to(torch.float64)
                self._sums[key] = (total + torch.nan_to_num(value, nan=0.0), n + seen)
            elif value == value:
                self._sums[key] = (total + value, n + 1)

    def window(self) -> dict:
        """What a checkpoint keeps of this process's loss module (`trainer_state.capture`): the sums since the
        last metrics line, and the generation batch still to be trained on (`num_iterations` > 1)."""
        held = {micro: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                for micro, batch in self._buffer.items()}
        return {"sums": {k: list(v) for k, v in _read(self._sums).items()}, "buffer": held}

    def set_window(self, window: dict | None) -> None:
        self._sums = {k: tuple(v) for k, v in window["sums"].items()} if window else {}
        self._buffer = dict(window.get("buffer") or {}) if window else {}

    def take_metrics(self) -> dict[str, float]:
        out = {key: total / n for key, (total, n) in _read(self._sums).items() if n}
        self._sums = {}
        return out


def _read(sums: dict) -> dict[str, tuple[float, float]]:
    """(sum, count) pairs kept on the device as numbers, read in one copy."""
    flat = read_sums({f"{k}\0{i}": v for k, pair in sums.items() for i, v in enumerate(pair)})
    return {k: (flat[f"{k}\0{0}"], flat[f"{k}\0{1}"]) for k in sums}


def filter_prompts(run_dir, prompts: list[PromptRow], loss_model: GRPOLossModel, batch: int,
                   main: bool) -> list[PromptRow]:
    """`train.grpo.filter_prompts`: the prompts whose group, sampled from the starting policy, scores with a spread
    — neither all right nor all wrong, the prompts whose advantages are not all zero (DAPO's and PRIME's filter,
    once before training). The kept places are written into the run (`prompt_filter.json`), so a resumed run
    trains on the same prompts without sampling again."""
    import json

    from tunelab.errors import TunelabError
    from tunelab.records import write_json
    import hashlib
    s = loss_model.settings
    # what the verdicts depend on: a file of another set or setting (a setup that failed, then changed) is not used
    key = hashlib.sha256(json.dumps([[r.prompt_ids for r in prompts], loss_model.seed, s.num_generations,
                                     s.temperature, s.top_p, s.top_k, s.max_completion_length,
                                     loss_model.rewards.names]).encode()).hexdigest()[:16]
    path = run_dir / "prompt_filter.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
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

def _prompts(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    return {"rows": rows, "packed": packed, "flat": flat}  # the rollout makes the batch


def _grpo_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.errors import TunelabError
    if rewards is None:
        raise TunelabError("a grpo run is scored by its rewards: train it through tunelab.pipeline (tunelab run / "
                           "tunelab train), which builds them from train.grpo.rewards", field="train.grpo.rewards")
    return GRPOLossModel(model, recipe.train.grpo, tokenizer, rewards, recipe.seed)


def _rollout(loss_model, batch: dict, step: int, rank: int, micro: int, device) -> dict:
    return loss_model.rollout(batch["rows"], step, rank, micro, device, batch["packed"], batch["flat"])


GRPO = Method("grpo", _prompts, lambda batch: batch["items"], _grpo_loss, token_validation, _rollout,
              lambda recipe: recipe.train.grpo.num_iterations)
