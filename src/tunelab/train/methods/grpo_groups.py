"""GRPO's scored sequences packed: each group's prompt held once, its completions after it, no padding.

TRL scores a GRPO batch as B = prompts × G rows of (left-padded prompt + right-padded completion): every
prompt runs G times, and every row is as wide as the longest prompt plus the longest completion. On the
quickstart's job (16 prompts × 8 completions, ~40-token prompts, answers of ~8 tokens in a 24-token budget)
that is 128 × 64 = 8,192 positions for ~1,650 that differ. Here a group is ONE packed row, as `data.share_prefix`
lays out fine-tuning samples (`data.packing.Row`): the prompt once (segment 0), then each completion's tokens as
a segment of their own that sees the prompt and itself (`collate_rows`' 4-D mask; on the CPU the rows are laid
end to end with no padding at all, `collate_flat`). Only the positions that predict a completion token are
projected onto the vocabulary: the prompt's last position (it predicts every completion's first token: one
hidden state, read G times) and each completion token but the last.

The numbers are TRL's: the same log-probability of each completion token, because each token attends to the
same tokens at the same relative positions (rotary attention sees only the distance, and a packed completion's
positions continue its prompt's, where TRL's left padding shifts the whole row: a constant shift). Checked
against the padded layout on the tiny architectures in `tests/test_grpo_groups.py`, and through it against TRL.
It applies where the head is a plain projection of the backbone's last hidden state and the attention takes a
4-D mask; elsewhere (logit soft-capping, flash attention, absolute positions) the padded layout is used.
"""

from __future__ import annotations

import torch

from tunelab.data.packing import IGNORE, Row, collate
from tunelab.model.kernels import STANDARD_DECODERS
from tunelab.model.kernels.attention import MASKED_ATTENTION, additive_for_eager
from tunelab.model.kernels.logprobs import head_parts, target_logps



def backbone_and_head(model):
    """(the backbone, the output head) of a causal LM (or its peft wrapper) whose logits are `head(last hidden
    state)` (`head_parts`) and whose attention packs groups exactly; None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    # rotary attention makes a constant position shift exact (absolute positions, as GPT-2's, would see packed
    # completions at other positions than TRL's left-padded rows): the decoders written as Llama is
    if getattr(config, "model_type", None) not in STANDARD_DECODERS:
        return None
    if getattr(config, "_attn_implementation", None) not in MASKED_ATTENTION:
        return None
    return head_parts(model)


def pack_groups(prompt_ids: list[list[int]], completion_ids: list[list[int]], completion_mask: torch.Tensor,
                group: int, pad_id: int, flat: bool) -> dict:
    """The model inputs of B = len(prompt_ids) completions, `group` consecutive rows a prompt, one packed row a
    group; and where to read each scored token: `predict_at` (the flattened hidden position that predicts it),
    `target_ids`, and its (`target_rows`, `target_cols`) in the (B, C) `completion_mask`, whose ones say which
    tokens are scored (a completion's first `sum` tokens)."""
    if len(prompt_ids) % group or len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts and {len(completion_ids)} completions in groups of {group}")
    lengths = completion_mask.sum(dim=1).tolist()
    rows, where, targets, target_rows, target_cols = [], [], [], [], []
    for g in range(0, len(prompt_ids), group):
        prompt = prompt_ids[g]
        if any(prompt_ids[b] != prompt for b in range(g, g + group)):
            raise ValueError(f"completions {g}-{g + group - 1} do not answer one prompt")
        P = len(prompt)
        row = Row(input_ids=list(prompt), labels=[IGNORE] * P, position_ids=list(range(P)), prefix=P,
                  segments=[0] * P)
        for k, b in enumerate(range(g, g + group), start=1):
            n = int(lengths[b])
            tokens = completion_ids[b][:n]
            start = len(row.input_ids)
            for j in range(n):  # token j is predicted at the prompt's last position, or at token j - 1
                where.append((len(rows), P - 1 if j == 0 else start + j - 1))
            targets += tokens
            target_rows += [b] * n
            target_cols += range(n)
            fed = tokens[:-1]  # the last scored token predicts nothing scored
            row.input_ids += fed
            row.labels += [IGNORE] * len(fed)
            row.position_ids += range(P, P + len(fed))
            row.segments += [k] * len(fed)
        rows.append(row)
    batch = collate(rows, pad_id, packed=True, flat=flat)
    batch.pop("labels")
    if flat:
        starts = [0]
        for r in rows[:-1]:
            starts.append(starts[-1] + len(r.input_ids))
    else:
        width = batch["input_ids"].shape[1]
        starts = [i * width for i in range(len(rows))]
    batch["predict_at"] = torch.tensor([starts[r] + o for r, o in where], dtype=torch.long)
    batch["target_ids"] = torch.tensor(targets, dtype=torch.long)
    batch["target_rows"] = torch.tensor(target_rows, dtype=torch.long)
    batch["target_cols"] = torch.tensor(target_cols, dtype=torch.long)
    return batch


MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "row_lengths", "span_masks")


def packed_completion_logps(parts, batch: dict, shape: tuple[int, int], temperature: float = 1.0,
                            entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`grpo_loss.completion_token_logps` of a `pack_groups` batch: (log p of every scored completion token, (B, C) in fp32
    and 0 elsewhere; the entropies of their distributions, or None). `parts` is `backbone_and_head(model)`."""
    backbone, head = parts
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    inputs["attention_mask"] = additive_for_eager(backbone.config, inputs["attention_mask"])
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch["predict_at"]]
    token_logps, per_token = target_logps(hidden, head, batch["target_ids"], temperature, entropy)
    index = (batch["target_rows"], batch["target_cols"])
    out = torch.zeros(shape, dtype=torch.float32, device=token_logps.device).index_put(index, token_logps)
    entropies = None
    if entropy:
        entropies = torch.zeros(shape, dtype=torch.float32, device=per_token.device).index_put(index, per_token)
    return out, entropies
