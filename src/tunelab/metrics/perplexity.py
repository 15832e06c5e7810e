"""Token-weighted perplexity with strided sliding windows (Hugging Face's perplexity recipe), batched.

A document is tokenised as the model normally encodes text (`tokenizer(text)`, special tokens included: a
Llama/Gemma tokenizer prepends BOS, tunelab's tiny BPE adds nothing). A document longer than the window is
scored in windows of at most `window` tokens that start every `stride` tokens; each window scores only the
tokens the previous window did not (its last `end - previous_end` tokens), with everything before them in
the window as context:

    for begin in range(0, n, stride):
        end = min(begin + window, n); score tokens [previous_end, end) given tokens [begin, t); previous_end = end

so with stride < window every token after the first window sees at least `window - stride` tokens of
context, and with stride = window the windows are disjoint (less context, a higher perplexity). A token
with nothing before it in its window (a document's first token; with stride = window, each window's first)
cannot be predicted and is not counted — exactly the tokens the Hugging Face recipe leaves out.

Perplexity = exp(sum of NLL over all counted tokens of all documents / number of counted tokens), i.e.
token-weighted, not a mean of per-document perplexities. `window` defaults to the model's context
(`max_position_embeddings`), `stride` to half the window.

Documents given as token ids (`score_token_ids`: a prepared corpus's blocks) are scored exactly as stored,
nothing re-tokenised: a block that fits the window is one window whose first token is unscored and every
later token (the final EOT included) counted — exp(mean NLL) is then exp(the trainer's validation loss).
The unigram baseline (`token_counts`, `unigram_logprobs`) prices the same scored positions with add-one
smoothed training-split token frequencies: what a model that ignores context would get.

Batching: windows of all documents are sorted by length and run `batch_size` at a time, right-padded, but
never more than `max_batch_tokens` padded tokens per forward; logits are computed only at scored positions.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class DocumentScore:
    nll: float     # summed negative log-likelihood (natural log) of the counted tokens
    tokens: int    # counted (predicted) tokens
    windows: int   # forward windows used


def check_window(window: int | None, stride: int | None) -> None:
    """What can be known of a window and stride before any model (None: the default, filled in later): whole
    numbers, a window of at least 2 tokens, a stride from 1 to the window. The one check: the `ppl` task runs it
    on its settings when configured (before any model work), `resolve_window` on the values it resolved."""
    for key, value, least in (("window", window, 2), ("stride", stride, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or value < least):
            raise TunelabError(f"{key} must be a whole number of at least {least} tokens, got {value!r}",
                               field=key)
    if window is not None and stride is not None and stride > window:
        raise TunelabError(f"stride must be between 1 and the window ({window}), got {stride}", field="stride")


def resolve_window(model, tokenizer, window: int | None, stride: int | None) -> tuple[int, int]:
    """(window, stride) with defaults filled in (the model's context, half the window) and checked against the
    model's context, the one thing only the model knows."""
    from tunelab.decoding.stops import context_length
    context = context_length(model, tokenizer)
    window = context if window is None else window
    if window > context:
        raise TunelabError(f"window {window} is longer than the model's context ({context} tokens)",
                           field="window")
    stride = max(1, window // 2) if stride is None else stride
    check_window(window, stride)
    return int(window), int(stride)


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a document of n tokens."""
    plans = []
    prev_end = 0
    for begin in range(0, max(n, 1), stride):
        end = min(begin + window, n)
        first = max(prev_end, begin + 1)
        if first < end:
            plans.append((begin, end, first))
        prev_end = end
        if end >= n:
            break
    return plans


def score_token_ids(model, tokenizer, documents, window: int | None = None, stride: int | None = None,
                    batch_size: int = 8, max_batch_tokens: int = 4096, progress: bool = False,
                    desc: str = "perplexity") -> tuple[list[DocumentScore], int, int]:
    """(per-document scores, window, stride) for documents given as token ids (lists or numpy arrays, e.g.
    a prepared corpus's blocks, scored exactly as stored)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    window, stride = resolve_window(model, tokenizer, window, stride)
    pieces = []  # (document, ids of the window, index of the first scored token within the window)
    for d, ids in enumerate(documents):
        for begin, end, first in plan_windows(len(ids), window, stride):
            pieces.append((d, np.asarray(ids[begin:end], dtype=np.int64), first - begin))
    nll = [0.0] * len(documents)
    tokens = [0] * len(documents)
    windows = [0] * len(documents)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))
    from tunelab.decoding.forward import logits_at
    from tunelab.decoding.sampling import token_logprobs
    from tunelab.decoding.stops import pad_token_id
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(pieces), disable=not progress, desc=desc, unit="window",
                                      leave=False) as bar:
        start = 0
        while start < len(order):
            width = len(pieces[order[start]][1])  # the longest of this batch (sorted)
            take = max(1, min(batch_size, max_batch_tokens // max(1, width)))
            idx = order[start: start + take]
            start += len(idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            keep = torch.zeros((len(idx), width), dtype=torch.bool)
            targets, owners = [], []
            for r, i in enumerate(idx):
                d, ids, first = pieces[i]
                input_ids[r, :len(ids)] = torch.from_numpy(ids)
                attention[r, :len(ids)] = 1
                keep[r, first - 1: len(ids) - 1] = True  # position t-1 predicts token t
                targets.append(ids[first:])
                owners += [d] * (len(ids) - first)
                windows[d] += 1
            logits = logits_at(model, input_ids.to(device), attention.to(device), keep.to(device), use_cache=False)
            target = torch.from_numpy(np.concatenate(targets)).to(logits.device)
            token_nll = (-token_logprobs(logits, target)[0]).double().cpu()
            for d, value in zip(owners, token_nll.tolist()):
                nll[d] += value
                tokens[d] += 1
            bar.update(len(idx))
    return [DocumentScore(n, t, w) for n, t, w in zip(nll, tokens, windows)], window, stride


def scored_targets(ids, window: int, stride: int):
    """The token ids `score_token_ids` counts for one document (its targets, in order), as one array."""
    import numpy as np
    parts = [np.asarray(ids[first:end]) for _, end, first in plan_windows(len(ids), window, stride)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --- the unigram baseline ----------------------------------------------------------------------------

def token_counts(tokens, vocab_size: int, chunk: int = 1 << 22):
    """How often each id occurs in a (memory-mapped) token array, read in chunks so memory stays flat."""
    import numpy as np
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start: start + chunk])
        if part.size and int(part.max()) >= vocab_size:
            raise TunelabError(f"token id {int(part.max())} is outside the vocabulary ({vocab_size})")
        counts += np.bincount(part, minlength=vocab_size)
    return counts


def unigram_logprobs(counts):
    """log p(token) of the add-one (Laplace) smoothed unigram model: (count + 1) / (total + vocabulary), so
    a token never seen in training still has a finite cost."""
    import numpy as np
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts + 1) - math.log(counts.sum() + len(counts))


def perplexity(nll: float, tokens: int) -> float:
    """exp(nll / tokens); inf when nothing was counted."""
    return math.exp(nll / tokens) if tokens else float("inf")
