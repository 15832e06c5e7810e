"""Batched greedy generation: the product's evaluation engine.

Prompts are tokenised once, sorted by length and left-padded into batches; one prefill, then one token per
step with the KV cache. Three things make it fast on small models and CPUs:
- the prompts of a batch usually share a template header (the alpaca preamble is ~45 % of an arithmetic
  prompt): that common prefix is run once and its cache copied to every row, so the prefill computes only
  what differs;
- the cache is written in place (`kv_cache.ReservedLayer`) instead of re-concatenated every step;
- rows that have produced EOS leave the batch (their cache rows are dropped), and a lean loop replaces
  `model.generate`, whose per-step overhead (logits processors, stopping criteria, input preparation) is a
  large share of the time for small models.
"""

from __future__ import annotations

# a shorter shared prefix is not worth its extra forward pass
MIN_SHARED_PREFIX = 4


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the prefill's last)."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def prefill(model, rows: list[list[int]], pad_id: int, room: int):
    """Run left-padded token rows into a fresh KV cache with `room` positions to spare after them.

    The rows' common prefix runs once and its cache is copied to every row; pads then sit between the
    prefix and each row's own tokens. Returns (output with the last position's logits, cache, attention
    mask over the cached positions, each row's next position id as an (n, 1) tensor).
    """
    import torch

    from tunelab.model.kv_cache import reserved_cache

    device = next(model.parameters()).device
    n = len(rows)
    shared = shared_prefix_length(rows)
    width = max(len(r) for r in rows) - shared
    input_ids = torch.tensor([[pad_id] * (width - len(r) + shared) + r[shared:] for r in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(r) + shared) + [1] * (len(r) - shared) for r in rows],
                                  device=device)
    cache = reserved_cache(model.config, shared + width + room)
    if shared:
        model(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        cache.batch_repeat_interleave(n)
        attention_mask = torch.cat([attention_mask.new_ones(n, shared), attention_mask], dim=-1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out, cache, attention_mask, position_ids[:, -1:] + 1


def greedy_batch(model, rows: list[list[int]], max_new_tokens: int, eos_id: int | None,
                 pad_id: int) -> list[list[int]]:
    """Greedy continuation of each row of token ids; returns the new token ids of each row (EOS excluded)."""
    import torch

    n = len(rows)
    out, cache, attention_mask, next_pos = prefill(model, rows, pad_id, max_new_tokens)
    alive = torch.arange(n)                     # original row of each batch row
    results: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1, :].argmax(-1)
        done = torch.zeros_like(tokens, dtype=torch.bool) if eos_id is None else tokens == eos_id
        for row, tok, fin in zip(alive.tolist(), tokens.tolist(), done.tolist()):
            if not fin:
                results[row].append(tok)
        if step == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            alive, tokens = alive[keep], tokens[keep]
            attention_mask, next_pos = attention_mask[keep], next_pos[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(alive), 1)], dim=-1)
        out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_pos,
                    past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
    return results


def generate_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy completions for `prompts`, returned in input order (special tokens stripped)."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode(), tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt",
                                      leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            new = greedy_batch(model, [encoded[i] for i in idx], max_new_tokens, tokenizer.eos_token_id, pad_id)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text
            bar.update(len(idx))
    return outputs
