"""Rejection-sampling fine-tuning (`train.method: rft`): expert iteration (Anthony et al. 2017), STaR (Zelikman et
al. 2022), RAFT (Dong et al. 2023), ReST-EM (Singh et al. 2023) — the simplest way a grader teaches a model, and the
baseline every RL result must beat: sample answers, keep the ones the grader accepts, fine-tune on them.

A row is a prompt (`sampling.PromptRow`); for each micro-batch the loop calls `rollout`, which
1. samples each prompt `num_generations` times from the model as it is now (`SamplingLossModel._sample`: the
   decoding core, seeded by the step and row, so a resumed run draws the same answers);
2. scores them with the run's rewards; an answer is accepted when its weighted reward reaches `accept` and it
   ended (an answer cut at `max_completion_length` would teach the model not to stop);
3. keeps at most `keep` distinct accepted answers a prompt and, with `max_answers`, at most that many in the
   micro-batch, taken from the prompts with the fewest accepted answers first — the hardest problems the model
   still solves, which an easy problem's many right answers would otherwise crowd out (ReST-EM caps answers per
   problem for the same reason);
4. encodes each kept answer as a fine-tuning sample (the prompt unlabelled, the answer and its end token
   labelled), packed as `data.packing` says, and collates it as `sft` does.
`forward` is `sft`'s loss (`sft_loss.LabelledLoss`) on those rows, each labelled token one loss item: the step is
exactly fine-tuning on the accepted answers. A round of expert iteration is an epoch over the prompts
(`train.epochs`); its answers come from the model as it is when the batch comes (online, as RAFT), not from a
model frozen for the round: on a CPU the sampling is most of the cost either way, and the online model's answers
are already the improved ones. A micro-batch with no accepted answer trains on nothing (one row, no label: its
backward keeps DDP whole).

`data.replay` (the base's own answers to general prompts, `pipeline/self_replay`) mixes rows that are never
sampled: each is trained as it is, beside the accepted answers of its micro-batch — as SFT replays them. Without
them an RFT stage learns only its task's answers and drifts on what no reward sees (measured on SmolLM2: the forms
of everyday answers fell to 73 % of the base's in 60 steps, docs/smollm2.md).
"""

from __future__ import annotations

import torch

from tunelab.data.packing import IGNORE, Encoded, pack_examples, unpacked_rows
from tunelab.recipe import Recipe
from tunelab.train.methods.base import Method, token_validation
from tunelab.train.methods.own_samples import PromptRow, SamplingLossModel, prompts_batch, rollout


def kept_answers(accepted: list[list[int]], keep: int, max_answers: int | None) -> list[tuple[int, int]]:
    """Which accepted answers a micro-batch trains on, as (prompt, answer) places: `accepted[p]` lists prompt p's
    distinct accepted answers; at most `keep` a prompt, and with `max_answers` at most that many in all, one from
    each prompt in turn, the prompts with the fewest accepted answers first (ties: in batch order)."""
    order = sorted((p for p in range(len(accepted)) if accepted[p]), key=lambda p: len(accepted[p]))
    chosen: list[tuple[int, int]] = []
    budget = max_answers if max_answers is not None else sum(min(keep, len(a)) for a in accepted)
    for turn in range(keep):
        for p in order:
            if len(chosen) >= budget:
                return chosen
            if turn < len(accepted[p]):
                chosen.append((p, accepted[p][turn]))
    return chosen


class RFTLossModel(SamplingLossModel):
    """What the loop calls forward on in an rft run: the rollout that samples, grades and keeps answers, and
    fine-tuning's loss on them."""

    def __init__(self, model: torch.nn.Module, settings, tokenizer, rewards, seed: int, max_len: int):
        super().__init__(model, settings, tokenizer, rewards, seed, key="rft")
        from tunelab.train.methods.sft_loss import LabelledLoss
        self.loss = LabelledLoss(model)
        self.max_len = max_len

    def rollout(self, rows: list[PromptRow], step: int, rank: int, micro: int, device) -> dict:
        """Sample, grade and keep one micro-batch's answers: the fine-tuning batch `forward` takes (laid out as
        `lay_out` said), plus `items` (its labelled tokens) and `tokens` (every token it trains on)."""
        from tunelab.data.packing import batch_to
        from tunelab.train.methods.grpo_loss import completion_metrics
        from tunelab.train.methods.sft import collate_labelled
        s, G = self.settings, self.settings.num_generations
        replayed = [r.replayed for r in rows if r.replayed is not None]
        rows = [r for r in rows if r.replayed is None]  # the base's fixed answers are trained, never sampled
        prompts = [r.prompt_ids for r in rows for _ in range(G)]
        completions = (self._sample(prompts, self._seeds(step, rank, micro, list(range(len(prompts)))), step)
                       .completions if prompts else [])
        accepted: list[list[int]] = []
        metrics = {"replayed": float(len(replayed))}
        if rows:
            scores = self._score([r.example for r in rows for _ in range(G)], completions)
            reward = torch.tensor(self.rewards.total(scores.tolist()))
            right = [bool(c) and c[-1] in self.stops and r >= s.accept for c, r in zip(completions, reward.tolist())]
            for p in range(len(rows)):
                seen, places = set(), []
                for i in range(p * G, (p + 1) * G):
                    if right[i] and tuple(completions[i]) not in seen:
                        seen.add(tuple(completions[i]))
                        places.append(i)
                accepted.append(places)
        chosen = kept_answers(accepted, s.keep, s.max_answers)
        samples = [Encoded(prompts[i] + completions[i], [IGNORE] * len(prompts[i]) + completions[i])
                   for _, i in chosen] + replayed
        if not samples:  # nothing accepted: one row without a label, so the backward pass (and DDP) stays whole
            samples = [Encoded(list(prompts[0]), [IGNORE] * len(prompts[0]))]
        laid = pack_examples(samples, self.max_len) if self.packed else unpacked_rows(samples)
        batch = collate_labelled(laid, self.pad_id, self.packed, self.flat)
        if rows:
            metrics.update({"reward": float(reward.mean()), "frac_accepted": sum(right) / len(completions),
                            "frac_prompts_solved": sum(1 for a in accepted if a) / len(rows),
                            "answers_trained": len(chosen) / len(rows)})
            for j, name in enumerate(self.rewards.names):
                metrics[f"rewards/{name}/mean"] = float(scores[:, j].mean())
            metrics.update(completion_metrics(completions, sorted(self.stops), self.pad_id))
        self._add(metrics)
        tokens = sum(len(r.input_ids) for r in laid) if chosen or replayed else 0
        return {**batch_to(batch, device), "items": len(batch["label_index"]), "tokens": tokens}

    def forward(self, input_ids, labels, num_items_in_batch, items=None, tokens=None, **inputs) -> torch.Tensor:
        return self.loss(input_ids, labels, num_items_in_batch, **inputs)


# --- the method, as the loop sees it: a batch is prompts, the rollout makes it -------------------------------

def _rft_loss(model, recipe: Recipe, tokenizer, rewards):
    from tunelab.errors import TunelabError
    if rewards is None:
        raise TunelabError("an rft run keeps the answers its rewards accept: train it through tunelab.pipeline "
                           "(tunelab run / tunelab train), which builds them from train.rft.rewards",
                           field="train.rft.rewards")
    return RFTLossModel(model, recipe.train.rft, tokenizer, rewards, recipe.seed, recipe.data.max_seq_len)


RFT = Method("rft", prompts_batch, lambda batch: batch["items"], _rft_loss, token_validation, rollout,
             disables_dropout=True)
