"""Log-likelihood scoring of (context, continuation) pairs, in the style of lm-evaluation-harness.

For every pair the result is the sum of the continuation's token log-probabilities given the context, the
number of continuation tokens, and whether greedy decoding would have produced exactly that continuation
(`is_greedy`). Multiple-choice tasks score each option as a continuation of the same prompt and pick the
argmax, so no answer parsing is involved.

Tokenisation follows tunelab's training and generation: context and continuation are tokenised separately
without special tokens (`add_special_tokens=False`) and concatenated, so the continuation's tokens are the
ones a fine-tuned model was trained to produce after the prompt. (lm-eval tokenises context+continuation
together and splits; with separate tokenisation the boundary is exact by construction.) When a pair is
longer than the model's context, the context is cut from the left, as lm-eval does.

Batching (`share_context=True`, the default): requests with the same context — the options of one
question, the two label words of a GLUE sentence — share one pass over that context. Contexts are sorted
by length (longest first, so an out-of-memory error shows in the first batch) and run once into a
left-padded KV cache (the prefixes they share once, as a trie: `decoding.DecodeBatch.prefill`), whose last
position gives every continuation's first token; the cache rows are then
copied per continuation and the continuations' remaining tokens run right-padded in one more forward pass.
A batch holds up to `batch_size` continuations. Multiple-choice scoring thus costs about one context pass
per question instead of one per option. `share_context=False`, and any pair too long for the model's
context, use lm-eval's layout instead: every pair its own right-padded row (context + continuation, the
context cut from the left to fit), `batch_size` rows per forward. Either way logits are computed only at
the scored positions (transformers' `logits_to_keep`), log-softmax runs in float32 a chunk of positions at a
time (`decoding.token_logprobs`), and a batch's scores come to the host in one copy. An empty context
is replaced by the tokenizer's BOS (else EOS) token, as lm-eval does.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class LoglikResult:
    logprob: float   # sum of the continuation tokens' log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax at its position
    tokens: int      # continuation tokens scored


def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 32,
                  max_length: int | None = None, progress: bool = False, desc: str = "loglik",
                  share_context: bool = True) -> list[LoglikResult]:
    """Score every (context, continuation) pair; results in input order.

    `share_context=True` runs each distinct context once and its continuations from the KV cache (see the
    module docstring); False gives every pair its own right-padded row (lm-eval's layout).
    """
    import torch
    from tqdm.auto import tqdm

    if not requests:
        return []
    from tunelab.decoding.stops import context_length, pad_token_id
    max_length = max_length or context_length(model, tokenizer)
    contexts = tokenizer([c for c, _ in requests], add_special_tokens=False)["input_ids"]
    continuations = tokenizer([c for _, c in requests], add_special_tokens=False)["input_ids"]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    results: list[LoglikResult | None] = [None] * len(requests)
    pairs, groups = [], {}  # pairs: (index, ctx, cont) scored alone; groups: context -> [(index, cont)]
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        ctx, cont = list(ctx) or ([prefix] if prefix is not None else []), list(cont)
        if not cont:  # an empty continuation: probability 1
            results[i] = LoglikResult(0.0, True, 0)
        elif share_context and ctx and len(ctx) + len(cont) - 1 <= max_length:
            groups.setdefault(tuple(ctx), []).append((i, cont))
        else:
            if not ctx:
                raise TunelabError("an empty context and a tokenizer without BOS/EOS: nothing to condition on",
                                   field="context")
            pairs.append((i, ctx, cont))
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(requests), disable=not progress, desc=desc, unit="pair",
                                      leave=False) as bar:
        bar.update(sum(r is not None for r in results))
        _score_pairs(model, pairs, results, batch_size, max_length, pad_id, device, bar)
        _score_groups(model, list(groups.items()), results, batch_size, pad_id, device, bar)
    return results  # type: ignore[return-value]


def _score_pairs(model, pairs, results, batch_size, max_length, pad_id, device, bar) -> None:
    """Every pair its own row: context + continuation (context cut from the left to fit), right-padded."""
    import torch

    from tunelab.decoding.forward import logits_at, to_device
    rows = []
    for i, ctx, cont in pairs:
        cont = cont[-max_length:]
        full = (ctx + cont)[-(max_length + 1):]
        rows.append((i, full[:-1], cont))
    rows.sort(key=lambda r: -len(r[1]))
    for start in range(0, len(rows), batch_size):
        batch = rows[start: start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        targets = []
        for r, (_, ids, cont) in enumerate(batch):
            input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[r, :len(ids)] = 1
            keep[r, len(ids) - len(cont): len(ids)] = True
            targets += cont
        logits = logits_at(model, to_device(input_ids, device), to_device(attention, device), to_device(keep, device),
                           use_cache=False)
        _collect([(logits, targets)], None, [(i, len(cont)) for i, _, cont in batch], results)
        bar.update(len(batch))


def _score_groups(model, groups, results, batch_size, pad_id, device, bar) -> None:
    """Each distinct context once (left-padded prefill into a KV cache), then all its continuations
    from copies of that cache (right-padded), `batch_size` continuations per batch."""
    import torch

    from tunelab.decoding.batch import DecodeBatch
    from tunelab.decoding.forward import to_device

    groups.sort(key=lambda g: -len(g[0]))
    start = 0
    while start < len(groups):
        batch, n_rows = [], 0
        while start < len(groups) and (not batch or n_rows + len(groups[start][1]) <= batch_size):
            batch.append(groups[start])
            n_rows += len(groups[start][1])
            start += 1
        rows = [(g, i, cont) for g, (_, members) in enumerate(batch) for i, cont in members]
        width = max(len(cont) for _, _, cont in rows) - 1  # continuation tokens after each first one
        state, last = DecodeBatch.prefill(model, [list(ctx) for ctx, _ in batch], pad_id, width + 1)
        sel = [g for g, _, _ in rows]
        # each row's first token is predicted by the prefill, its later tokens by a second pass
        scored = [(last.index_select(0, to_device(torch.tensor(sel), device)), [cont[0] for _, _, cont in rows])]
        if width > 0:
            state.select(sel)
            inp = torch.full((len(rows), width), pad_id, dtype=torch.long)
            cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (_, _, cont) in enumerate(rows):
                inp[r, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
                cont_mask[r, :len(cont) - 1] = 1
            scored.append((state.score(to_device(inp, device), to_device(cont_mask, device)),
                           [t for _, _, cont in rows for t in cont[1:]]))
        # row r's tokens in order: its first token, then its slice of the second pass's
        order, later = [], len(rows)
        for r, (_, _, cont) in enumerate(rows):
            order += [r, *range(later, later + len(cont) - 1)]
            later += len(cont) - 1
        _collect(scored, order, [(i, len(cont)) for _, i, cont in rows], results)
        bar.update(len(rows))


def _collect(scored, order, owners, results) -> None:
    """Sum per-token log-probabilities per request. `scored` is (logits, targets) pieces whose tokens, in
    `order` (None: as they come), are `owners`' (request index, token count) in turn. One copy to the host."""
    import torch

    from tunelab.decoding.forward import to_device
    from tunelab.decoding.sampling import token_logprobs
    parts = []
    for logits, targets in scored:
        chosen, greedy, _, _ = token_logprobs(logits, to_device(torch.tensor(targets), logits.device))
        parts.append(torch.stack([chosen, greedy.float()]))
    host = torch.cat(parts, dim=1).cpu()
    if order is not None:
        host = host[:, order]
    token_lp, greedy = host[0].double(), host[1].bool()
    pos = 0
    for i, n in owners:
        results[i] = LoglikResult(float(token_lp[pos: pos + n].sum()), bool(greedy[pos: pos + n].all()), n)
        pos += n
