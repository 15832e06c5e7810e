"""Batched generation, the evaluation engine: rows decode together, finished rows leave, waiting rows join
(continuous batching), and the shared template header of the rows prefilled together runs once. Evaluation,
log-likelihood scoring, perplexity, GRPO's rollouts and the server all generate through the decoding core.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.decoding.batch import DecodeBatch
from tunelab.decoding.running import RunningRows
from tunelab.decoding.sampling import SamplingParams, sample_next
from tunelab.decoding.engines import DecodingEngine
from tunelab.decoding.stops import pad_token_id, stop_token_ids
from tunelab.decoding.text_stream import TextStream

def decode_rows(model, rows: list[list[int]], max_new_tokens: int, stops: frozenset[int], pad_id: int,
                batch_size: int, streams: list[TextStream] | None = None,
                on_done=None, sampling: list[SamplingParams] | None = None,
                generators: list | None = None, keep_stop: bool = False) -> tuple[list[list[int]], list[bool]]:
    """The continuation of every row of token ids, greedy unless `sampling` says otherwise, `batch_size` rows decoding at a time: (the new ids of
    each row, its stop token excluded; whether each row stopped by itself rather than at `max_new_tokens`).
    With `sampling` (a SamplingParams a row) and `generators` (a `torch.Generator` a row), each row draws its
    tokens instead (`sample_next`): a row's draws come from its own generator, so a seeded row gives the same
    completion whichever rows share its batch (the rollouts of reinforcement learning, `-n N` samples).
    `keep_stop`: a row that stopped at a stop token keeps it as its last id (what a policy is trained to emit).

    A row is done when it emits a stop token or, with `streams`, when its text reaches a stop string. It leaves
    the batch at once (the last row moves into its place: a copy of that row's cache, not of the batch's), and
    once half the batch is free the waiting rows are prefilled together and merged in (continuous batching by the
    server's own `RunningRows`), so decode steps run on the rows still answering, and prefills on many rows at a
    time.
    `on_done(k)` is told each time k rows have finished. Rows are taken in the order given (sort them by length:
    less padding).

    A decode step copies one thing to the host, the batch's next tokens; the next step's input is those tokens
    on the device."""
    n = len(rows) if max_new_tokens > 0 else 0
    if sampling is not None and (len(sampling) != len(rows) or generators is None or len(generators) != len(rows)):
        raise ValueError("sampling needs one SamplingParams and one generator a row")

    def choose(logits, rows_of_batch: list[int]):
        if sampling is None:
            return logits.argmax(-1)
        return sample_next(logits, [sampling[r] for r in rows_of_batch], [generators[r] for r in rows_of_batch])

    results: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    waiting = 0                                 # next row to admit
    running = RunningRows(batch_size, admit_at=(batch_size + 1) // 2)  # owners: each batch row's row
    while waiting < n or running:
        room = running.room()
        if waiting < n and room:
            take = list(range(waiting, min(n, waiting + room)))
            waiting = take[-1] + 1
            new, new_logits = DecodeBatch.prefill(model, [rows[i] for i in take], pad_id, max_new_tokens)
            running.join(new, choose(new_logits, take), take)
        done = []
        for j, (row, tok) in enumerate(zip(running.owners, running.tokens.tolist())):
            if tok in stops:
                stopped[row] = True
                if keep_stop:
                    results[row].append(tok)
            else:
                results[row].append(tok)
                if streams is not None and streams[row].add(tok):
                    stopped[row] = True
                elif len(results[row]) < max_new_tokens:
                    continue
            done.append(j)
        if done and on_done is not None:
            on_done(len(done))
        running.leave(done)
        if running:
            running.tokens = choose(running.step(), running.owners)
    return results, stopped


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop": a stop token or stop string ended it; "length": it reached max_new_tokens


def generate_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate", stop: tuple[str, ...] = ()) -> list[str]:
    """Greedy completions of `prompts` in input order (their texts; see `complete_batched`)."""
    return [c.text for c in complete_batched(model, tokenizer, prompts, max_new_tokens, batch_size, progress, desc,
                                             stop)]


def complete_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate", stop: tuple[str, ...] = ()) -> list[Completion]:
    """Greedy completions of `prompts` in input order, special tokens stripped, each ending before its
    first stop token (`stop_token_ids`) or stop string, with why it ended (a stop rate counts "stop").

    Prompts are tokenised once without special tokens (as tunelab trains), sorted by length and
    left-padded into batches; the shared template header of the rows prefilled together is run once
    (`DecodeBatch.prefill`), the cache is written in place, finished rows leave the batch and waiting
    prompts take their places (`decode_rows`): faster than `model.generate` on length-sorted left-padded
    batches (benchmarks/bench_eval.py)."""
    return _complete(model, tokenizer, prompts, 1, None, max_new_tokens, batch_size, progress, desc, stop)


def sample_batched(model, tokenizer, prompts: list[str], samples: int, temperature: float = 1.0, top_p: float = 1.0,
                   seed: int = 0, max_new_tokens: int = 32, batch_size: int = 32, progress: bool = True,
                   desc: str = "sample", stop: tuple[str, ...] = ()) -> list[list[Completion]]:
    """`samples` completions of each prompt drawn at `temperature` / `top_p` (a list a prompt, in input order), as
    `complete_batched` makes greedy ones, in one decoding call: a prompt's copies sit side by side, so the tree
    prefill computes the prompt once for all of them. Draw j of a prompt comes from its own generator, seeded by
    `seed`, j and the prompt's text: the same answers whatever else is evaluated with it or shares its batch."""
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    flat = _complete(model, tokenizer, prompts, samples, (params, seed), max_new_tokens, batch_size, progress, desc,
                     stop)
    return [flat[i * samples: (i + 1) * samples] for i in range(len(prompts))]


def _draw_seed(seed: int, j: int, prompt: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.blake2b(f"{seed}/{j}/{prompt}".encode(), digest_size=8).digest(), "little") >> 1


def _complete(model, tokenizer, prompts: list[str], copies: int, sampling: tuple | None, max_new_tokens: int,
              batch_size: int, progress: bool, desc: str, stop: tuple[str, ...]) -> list[Completion]:
    """`copies` completions of each prompt, prompt-major (greedy, or drawn with `sampling`: (params, seed)), by
    `model`'s engine (`as_engine`: a torch model decodes here, a `VLLMEngine` on its server)."""
    from tqdm.auto import tqdm

    if not prompts:
        return []
    engine = as_engine(model, tokenizer)
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    stops = stop_token_ids(engine, tokenizer)
    total = len(prompts) * copies
    # a prompt's copies stay adjacent (a stable sort): the tree prefill shares them whole
    order = sorted(range(total), key=lambda r: len(encoded[r // copies]))
    params = seeds = None
    if sampling is not None:
        params = sampling[0]
        seeds = [_draw_seed(sampling[1], r % copies, prompts[r // copies]) for r in order]
    with tqdm(total=total, disable=not progress, desc=desc, unit="answer" if copies > 1 else "prompt",
              leave=False) as bar:
        streams = [TextStream(tokenizer, stop) for _ in order] if stop else None
        new, stopped = engine.decode([encoded[r // copies] for r in order], max_new_tokens, stops,
                                     batch_size=batch_size, sampling=params, seeds=seeds, streams=streams,
                                     on_done=bar.update)
    if streams:
        for s in streams:
            s.add(None, final=True)
        texts = [s.text for s in streams]
    else:
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    outputs: list[Completion] = [Completion("", "length")] * total
    for r, text, done in zip(order, texts, stopped):
        outputs[r] = Completion(text, "stop" if done else "length")
    return outputs


class EmbeddedEngine:
    """tunelab's own decoding core over `model` (a transformers model, peft's included) in this process.
    `generator_device`: where a row's generator lives (default the model's device; a trainer that has always drawn
    on the host says "cpu", so a seed gives the samples it always gave)."""

    kind = "embedded"

    def __init__(self, model, pad_id: int, generator_device=None):
        self.model = model
        self.pad_id = pad_id
        self.generator_device = generator_device

    @property
    def generation_config(self):
        return getattr(self.model, "generation_config", None)

    def decode(self, rows, max_new_tokens, stops, *, batch_size=32, sampling=None, seeds=None, streams=None,
               keep_stop=False, on_done=None):
        import torch
        params = generators = None
        if sampling is not None:
            if seeds is None or len(seeds) != len(rows):
                raise ValueError("sampling needs one seed a row")
            device = self.generator_device or next(self.model.parameters()).device
            params = [sampling] * len(rows)
            generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        with torch.inference_mode():
            return decode_rows(self.model, rows, max_new_tokens, stops, self.pad_id, batch_size, streams,
                               on_done=on_done, sampling=params, generators=generators, keep_stop=keep_stop)


def as_engine(model_or_engine, tokenizer) -> DecodingEngine:
    """An engine as it is; a torch model as the embedded engine over it (its batches padded with the
    tokenizer's pad id)."""
    if isinstance(model_or_engine, DecodingEngine):
        return model_or_engine
    return EmbeddedEngine(model_or_engine, pad_token_id(tokenizer, stop_token_ids(model_or_engine, tokenizer)))
