"""What a model's outputs mean, decided once so `tunelab eval`, `tunelab serve` and the arena give the same tokens
for the same checkpoint:

- which tokens end an answer (`stop_token_ids`): the tokenizer's EOS, every id in the model's
  `generation_config.eos_token_id`, and the end-of-turn token of the tokenizer's chat template
  (Llama-3's `<|eot_id|>`, Qwen's `<|im_end|>`, Gemma's `<end_of_turn>`), which is not always EOS;
- which id pads a batch (`pad_token_id`) and how long the context is (`context_length`).
"""

from __future__ import annotations

# an assistant message this unlikely to merge with the text a chat template puts after it
_SENTINEL = "\u2063tunelab\u2063answer\u2063"


def end_of_turn_id(tokenizer) -> int | None:
    """The special token a chat template puts right after an assistant's message, if it puts one.

    Found by rendering a one-turn conversation whose answer is a sentinel and reading the first
    non-blank token after it; None without a chat template, when the template fails to render, or when no
    special token follows the answer (a continuation template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:  # noqa: BLE001 - any template error means "no end-of-turn token known"
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    after = text.rsplit(_SENTINEL, 1)[1]
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
                   if getattr(tok, "special", False))
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return int(token)
        if tokenizer.decode([token]).strip():
            return None
    return None


def stop_token_ids(model, tokenizer) -> frozenset[int]:
    """Token ids that end a generated answer: tokenizer EOS ∪ generation_config.eos_token_id ∪ the chat
    template's end-of-turn token."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    turn = end_of_turn_id(tokenizer)
    if turn is not None:
        ids.add(turn)
    return frozenset(ids)


def pad_token_id(tokenizer, stops=()) -> int:
    """The id that fills left padding: the tokenizer's pad token, else its EOS, else a stop id, else 0.
    (Padded positions are masked out, so any id is correct; a real one keeps embeddings in range.)"""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, *sorted(stops)):
        if candidate is not None:
            return int(candidate)
    return 0


def context_length(model, tokenizer=None) -> int:
    """The model's context in tokens: config.max_position_embeddings (or GPT-2's n_positions), capped by a
    sane tokenizer.model_max_length; 2048 when neither says."""
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        n = min(n, tok_max)
    return int(n)
