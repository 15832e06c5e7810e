"""What the methods that learn from the model's own samples share (`grpo`, `rft`): a row is a prompt
(`PromptRow`), and the loss module (`SamplingLossModel`) samples answers to it with tunelab's decoding core,
scores them with the run's rewards, and keeps its metrics on the device until a metrics line reads them.

Sampling: by the run's sampler (`samplers`): the training model itself through the embedded engine (a seeded
generator a row, batched, KV cache, the eval engine's stop tokens, the model in eval mode with its adapter on), or
a vLLM server holding the policy's adapter as of the step (`engine.kind: vllm`). A row's seed comes from (method,
recipe seed, step, process, micro-batch, row), so a resumed run samples exactly what the unbroken run did. Dropout is off for the whole run
(TRL's `disable_dropout: true`, `Method.disables_dropout`, done where the run is set up): the samples and the loss
are of one model, not of two noisy ones. The loss module makes its own batches, so it keeps how the run lays out
rows (`lay_out`, told once by the training setup) instead of each batch carrying it."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from tunelab.data.examples import Example
from tunelab.data.packing import Encoded
from tunelab.train.methods.base import read_sums


@dataclass
class PromptRow:
    """A prompt to sample answers to: its tokens as fine-tuning encodes them, and its example. A replayed example
    (`data.replay`: the base's own answer) is never sampled: `replayed` is its whole sample, prompt and answer, as
    fine-tuning encodes it, which `rft` trains beside the accepted answers."""

    prompt_ids: list[int]
    example: Example
    replayed: Encoded | None = None

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids

    @property
    def sample_tokens(self) -> int:
        return len(self.prompt_ids)


def prompt_rows(recipe, examples: list[Example], tokenizer, template,
                completion_room: int) -> tuple[list[PromptRow], int]:
    """(a row per example, how many prompts were cut to fit `data.max_seq_len` less the completion's room)."""
    from tunelab.data.packing import IGNORE, encode_examples
    from tunelab.errors import TunelabError
    room = recipe.data.max_seq_len - completion_room
    if room < 8:
        raise TunelabError(f"data.max_seq_len {recipe.data.max_seq_len} leaves {room} tokens for a prompt after "
                           f"{completion_room} of completion", field="data.max_seq_len")
    rows, cut = [], 0
    # the prompt is everything before the last assistant turn (earlier turns of a conversation included)
    encoded_all = encode_examples(tokenizer, template, examples, recipe.data.max_seq_len, "last_turn")
    replays = [ex for ex in examples if ex.meta.get("replay")]
    replayed = iter(encode_examples(tokenizer, template, replays, recipe.data.max_seq_len, recipe.data.loss_on)
                    if replays else [])
    for example, encoded in zip(examples, encoded_all):
        answer = next((i for i, label in enumerate(encoded.labels) if label != IGNORE), len(encoded.labels))
        prompt = encoded.input_ids[:answer]
        if len(prompt) > room:
            prompt, cut = prompt[-room:], cut + 1
        rows.append(PromptRow(prompt, example, next(replayed) if example.meta.get("replay") else None))
    return rows, cut


class SamplingLossModel(torch.nn.Module):
    """The loss module of a method that samples: the model, the sampling settings (`num_generations`,
    `max_completion_length`, `temperature`, `top_p`, `top_k`), the rewards, and the metric sums since the last
    metrics line, and how the run lays out rows (`packed`, `flat`: `lay_out`). A subclass adds `rollout` and
    `forward`."""

    def __init__(self, model: torch.nn.Module, settings, tokenizer, rewards, seed: int, key: str):
        super().__init__()
        from tunelab.decoding.sampling import SamplingParams
        from tunelab.decoding.stops import pad_token_id, stop_token_ids
        self.model, self.settings, self.tokenizer, self.rewards, self.seed = model, settings, tokenizer, rewards, seed
        self.key = key  # the method's name in the samples' seeds: grpo's and rft's draws differ
        self.packed = self.flat = False  # the rows' layout: padded until the setup says (`lay_out`)
        self.stops = stop_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, self.stops)
        from tunelab.train.methods.samplers import OwnModel
        self.sampler = OwnModel(model, self.pad_id)  # who draws the answers: the run's setup may put vLLM here
        self.sampling = SamplingParams(max_tokens=settings.max_completion_length, temperature=settings.temperature,
                                       top_p=settings.top_p, top_k=settings.top_k)
        self._sums: dict[str, tuple] = {}  # metric -> (sum, count): 0-d tensors on the device until read

    def lay_out(self, packed: bool, flat: bool) -> None:
        """How the run lays out rows (`methods.base.LaysOutRows`): `packed` (`data.packing`), and `flat`, packed rows
        laid end to end (`collate_flat`, where the model's CPU attention takes them)."""
        self.packed, self.flat = bool(packed), bool(flat)

    def _seeds(self, step: int, rank: int, micro: int, rows: list[int], again: int = 0) -> list[int]:
        """Each row's draw seed, from (recipe seed, step, process, micro-batch, row, try): a resumed run draws what
        the unbroken run did."""
        def seed(row: int) -> int:
            key = f"{self.key}/{self.seed}/{step}/{rank}/{micro}/{row}" + (f"/again{again}" if again else "")
            return zlib.crc32(key.encode())
        return [seed(r) for r in rows]

    def _sample(self, prompts: list[list[int]], seeds: list[int], step: int):
        """A `samplers.Draws` of the prompts, one seed a row, by the run's sampler as the policy is after `step`
        optimizer steps: the model itself, or vLLM with the adapter synced (`samplers`)."""
        return self.sampler.draw(prompts, seeds, self.sampling, self.settings.max_completion_length, self.stops,
                                 step)

    def _score(self, examples: list[Example], completions: list[list[int]]) -> torch.Tensor:
        """Each completion's reward terms, (completions, terms)."""
        texts = self.tokenizer.batch_decode([[t for t in c if t not in self.stops] for c in completions],
                                            skip_special_tokens=True)
        prompt_texts = [e.instruction if not e.input else f"{e.instruction}\n{e.input}" for e in examples]
        return torch.tensor(self.rewards.score(prompt_texts, texts, examples, completions), dtype=torch.float32)

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
        last metrics line."""
        return {"sums": {k: list(v) for k, v in _read(self._sums).items()}}

    def set_window(self, window: dict | None) -> None:
        self._sums = {k: tuple(v) for k, v in window["sums"].items()} if window else {}

    def take_metrics(self) -> dict[str, float]:
        out = {key: total / n for key, (total, n) in _read(self._sums).items() if n}
        self._sums = {}
        return out


def _read(sums: dict) -> dict[str, tuple[float, float]]:
    """(sum, count) pairs kept on the device as numbers, read in one copy."""
    flat = read_sums({f"{k}\0{i}": v for k, pair in sums.items() for i, v in enumerate(pair)})
    return {k: (flat[f"{k}\0{0}"], flat[f"{k}\0{1}"]) for k in sums}


# --- a sampling method as the loop sees it: a batch is prompts, the rollout makes it -------------------------

def prompts_batch(rows: list, pad_id: int, packed: bool, flat: bool) -> dict:
    """`Method.collate` of a sampling method: the prompts as they are (the rollout makes the batch, laid out as its
    loss module was told: `SamplingLossModel.lay_out`)."""
    return {"rows": rows}


def rollout(loss_model, batch: dict, step: int, rank: int, micro: int, device) -> dict:
    """`Method.rollout` of a sampling method: its loss model's rollout on the micro-batch's prompts."""
    return loss_model.rollout(batch["rows"], step, rank, micro, device)
