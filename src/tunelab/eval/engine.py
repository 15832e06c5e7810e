"""Batched greedy generation: the product's evaluation engine.

Prompts are sorted by length and left-padded into batches; one prefill, then one token per step with the
KV cache. Rows that have produced EOS leave the batch (their cache rows are dropped), so a batch costs what
its longest *answer* costs only for the rows still writing. A lean loop instead of `model.generate`:
for small models the per-step overhead of `generate` (logits processors, stopping criteria, input
preparation) is a large share of the time.
"""

from __future__ import annotations


def greedy_batch(model, input_ids, attention_mask, max_new_tokens: int, eos_id: int | None,
                 pad_id: int) -> list[list[int]]:
    """Greedy continuation of one left-padded batch; returns the new token ids of each row (EOS excluded)."""
    import torch
    from transformers import DynamicCache

    n = input_ids.shape[0]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    alive = torch.arange(n)                     # original row of each batch row
    results: list[list[int]] = [[] for _ in range(n)]
    next_pos = position_ids[:, -1:] + 1
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

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt",
                                          leave=False) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                new = greedy_batch(model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                                   tokenizer.eos_token_id, pad_id)
                for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    outputs[i] = text
                bar.update(len(idx))
    finally:
        tokenizer.padding_side = side
    return outputs
