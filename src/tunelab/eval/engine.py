"""Batched greedy generation: prompts sorted by length, left-padded, KV cache on (not one at a time)."""

from __future__ import annotations


def generate_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy completions for `prompts`, returned in input order (special tokens stripped).

    Sorting by length keeps padding small; left padding keeps every prompt's last token at the end so
    generation continues all rows in step.
    """
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt",
                                          leave=False) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    outputs[i] = text
                bar.update(len(idx))
    finally:
        tokenizer.padding_side = side
    return outputs
