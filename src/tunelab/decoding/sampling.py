"""Choosing the next token: greedy or drawn (temperature, top-k, top-p) with each row's own generator, and the
log-probabilities a request asks for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tunelab.decoding.forward import to_device

GREEDY_TEMPERATURE = 1e-5     # temperatures below this (and NaN) decode greedily


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: no top-k filter
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None         # alternatives per generated token (None: no logprobs)
    prompt_logprobs: int | None = None  # alternatives per prompt token (for echo; None: none)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0 (or below GREEDY_TEMPERATURE, where a draw is all but certain to be
        the argmax and dividing by it only courts overflow), or top-k 1."""
        return not self.temperature >= GREEDY_TEMPERATURE or self.top_k == 1


def sample_next(logits, params: list[SamplingParams], generators: list):
    """One token per row of (n, vocab) logits, left on their device: the argmax for a greedy row, else a draw
    from the row's temperature / top-k / top-p distribution with the row's own `torch.Generator` (so a seed
    reproduces a completion whatever shares the batch). A NaN logit counts as -inf, never chosen. The rows are
    filtered together; only the noise of the draw is made row by row, from each row's generator."""
    import torch
    logits = logits.masked_fill(logits.isnan(), float("-inf"))
    tokens = logits.argmax(-1)
    drawn = [i for i, p in enumerate(params) if not p.greedy]
    if not drawn:
        return tokens
    if len(drawn) == len(params):
        return _draw(logits, tokens, params, generators)
    index = to_device(torch.tensor(drawn, dtype=torch.long), logits.device)
    draws = _draw(logits.index_select(0, index), tokens.index_select(0, index), [params[i] for i in drawn],
                  [generators[i] for i in drawn])
    return tokens.index_copy(0, index, draws)


def sample_tokens(logits, params: list[SamplingParams], generators: list) -> list[int]:
    """`sample_next`'s tokens on the host."""
    return sample_next(logits, params, generators).tolist()


def _draw_dtype(device):
    """The precision of a draw: float64 on a CPU, where tunelab has always drawn in float64 (so a seed gives the
    tokens it gave before), float32 elsewhere (float64 is slow on most GPUs, and a seeded draw there comes from
    a generator on the device: repeatable, not the CPU's tokens)."""
    import torch
    return torch.float64 if device.type == "cpu" else torch.float32


def _draw(rows, argmax, params: list[SamplingParams], generators: list):
    """A token per row drawn from its filtered distribution: `torch.multinomial`'s own method, the argmax of the
    probabilities over Exp(1) noise, with the noise from the row's generator (equal to multinomial draw for draw).

    Numerically safe at any temperature: logits are shifted so their maximum is 0 before the division (a
    temperature of 1e-30 gives 0 and -inf, never inf - inf). A row with +inf logits (an overflowed half-precision
    model) draws among those alone; a row with nothing allowed (all -inf) takes `argmax`, its noise made all the
    same (which rows those are is only known on the device)."""
    import torch
    device, vocab = rows.device, rows.shape[-1]
    dtype = _draw_dtype(device)

    def per_row(values, kind=dtype):
        return to_device(torch.tensor(values, dtype=kind), device)[:, None]

    x = rows.to(dtype)
    top = x.amax(-1, keepdim=True)
    nothing = top == float("-inf")
    # x - top is NaN only at a +inf logit of a row whose maximum is +inf (elsewhere in that row: -inf) and
    # everywhere in a row with nothing allowed: NaN -> 0 draws the first among its +inf logits and gives the
    # second a uniform row, in the one pass over (rows x vocab) the shift and the temperature take anyway
    x = torch.nan_to_num((x - top).div_(per_row([p.temperature for p in params])), nan=0.0,
                         posinf=float("inf"), neginf=float("-inf"))
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        kth = x.topk(max(ks), dim=-1).values.gather(1, per_row([max(k - 1, 0) for k in ks], torch.long))
        x = x.masked_fill((per_row(ks, torch.long) > 0) & (x < kth), float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = per_row([p.top_p for p in params])
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        drop = (probs.cumsum(-1) - probs > top_p) & (top_p < 1.0)  # keep the smallest prefix reaching top_p
        x = x.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = x.softmax(-1)
    noise = torch.empty_like(probs)
    _exponential_rows(noise, generators)
    return torch.where(nothing[:, 0], argmax, probs.div_(noise).argmax(-1))


_pool: tuple[int, int, object] | None = None  # (the process id it was made in, its threads, a thread pool)


def _exponential_rows(noise, generators: list) -> None:
    """Fill each row of `noise` with Exp(1) draws from its own generator. A CPU generator fills a tensor in one
    thread (its draws in order, so a seed repeats), and the noise is most of a draw's time (a 49k vocabulary:
    ~1.5 ms a row in float64): on a CPU the rows are spread over torch's threads, which the op leaves the GIL
    for. The same numbers whichever thread fills a row."""
    import torch
    workers = min(torch.get_num_threads(), len(generators))
    if noise.device.type != "cpu" or workers < 2 or noise.shape[-1] < 4096:
        for row, generator in zip(noise, generators):
            row.exponential_(generator=generator)
        return
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:  # a forked child makes its own
        from concurrent.futures import ThreadPoolExecutor
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="tunelab-draw"))

    def fill(part: range) -> None:
        with torch.inference_mode():  # a thread's own mode: the caller's noise may be an inference tensor
            for i in part:
                noise[i].exponential_(generator=generators[i])

    n = len(generators)
    list(_pool[2].map(fill, [range(k * n // workers, (k + 1) * n // workers) for k in range(workers)]))


def token_logprobs(logits, targets, top: int = 0):
    """Log-probabilities of `targets` (m,) under the rows of `logits` (m, vocab): (each target's log-probability
    (m,) float32, whether it is the row's argmax (m,) bool, the `top` largest log-probabilities (m, top) float32
    and their token ids (m, top)), on the logits' device.

    The log-softmax is the one every method shares (`model.kernels.logprobs.log_softmax_chunks`): ~8 MB of
    float32 at a time, from logits kept in their own dtype, so a prompt's log-probabilities never hold its
    (positions x vocabulary) logits in float32. Row for row the same numbers as one float32 log-softmax."""
    import torch

    from tunelab.model.kernels.logprobs import log_softmax_chunks
    parts = []
    for lo, hi, logp in log_softmax_chunks(logits):
        target = targets[lo:hi, None]
        values, ids = logp.topk(top, dim=-1) if top else (logp[:, :0], target[:, :0])
        parts.append((logp.gather(1, target)[:, 0], logp.argmax(-1) == target[:, 0], values, ids))
    return tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
