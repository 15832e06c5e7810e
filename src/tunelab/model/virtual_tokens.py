"""Prompt tuning's virtual tokens (peft's PROMPT_TUNING adapter), as tunelab's own forward paths run them.

peft adds them inside `PeftModel.forward`: N trained embeddings before every row's input, the attention mask and
labels widened to match, position ids dropped, and logits returned N positions longer. tunelab's paths do not go
through that forward: the loss runs the backbone and projects only the labelled positions (`LabelledLoss`), the
decoding core keeps a KV cache of its own and passes position ids, and the metrics ask for logits at given
positions. So they take the virtual tokens from here, with one rule:

- a forward **without** a KV cache gets them prepended and its outputs cut back to the input's own positions
  (`PrefixedBackbone`, `prefixed_logits`): every caller sees the shapes it would without prompt tuning;
- a decoding batch puts their keys and values at the front of its cache once, as the prefix every row attends
  to (`decoding.batch.DecodeBatch.prefill`), and its later forwards run the base model over that cache.

The model is the same one peft's forward computes: the test trains, saves, reloads through plain peft and
compares these logits with peft's own (tests/test_prompt_tuning.py). The loss is peft's too for every row tunelab
builds: peft's forward would also predict a row's first token from the last virtual token, but tunelab never
trains a row's first token (`data.packing._cut`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def prompt_tuned(model) -> bool:
    """Whether the model's active adapter is prompt tuning (not a plain model, LoRA or the other kinds, which
    change the weights instead): asked on every forward, so it reads the config and computes nothing."""
    config = getattr(model, "active_peft_config", None) if hasattr(model, "get_prompt") else None
    return config is not None and str(getattr(config.peft_type, "value", config.peft_type)) == "PROMPT_TUNING"


def virtual_tokens(model) -> "torch.Tensor | None":
    """The active prompt-tuning adapter's embeddings, (N, hidden), with their gradient when they train; None for
    any other model."""
    return model.get_prompt(batch_size=1)[0] if prompt_tuned(model) else None


def peft_inner_model(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prefixed_inputs(model, prompts: "torch.Tensor", input_ids, attention_mask=None, position_ids=None) -> dict:
    """The base model's inputs with `prompts` (N, hidden) before every row: embeddings, and the 2-D mask and
    position ids (when given) widened by N, the input's own positions moved on by N."""
    import torch
    embed = peft_inner_model(model).get_input_embeddings()(input_ids)
    rows, n = input_ids.shape[0], prompts.shape[0]
    inputs = {"inputs_embeds": torch.cat([prompts.to(embed.dtype).expand(rows, -1, -1), embed], dim=1)}
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise ValueError("prompt tuning takes a 2-D attention mask (rows are not packed)")
        inputs["attention_mask"] = torch.cat([attention_mask.new_ones(rows, n), attention_mask], dim=1)
    if position_ids is not None:
        lead = torch.arange(n, device=position_ids.device, dtype=position_ids.dtype).expand(rows, -1)
        inputs["position_ids"] = torch.cat([lead, position_ids + n], dim=1)
    return inputs


class PrefixedBackbone:
    """A prompt-tuned model's backbone as `head_parts` hands it out: called as the backbone is, it runs the
    virtual tokens before the input and returns the last hidden states of the input's own positions."""

    def __init__(self, model, backbone):
        self.model, self.backbone = model, backbone

    def __call__(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        prompts = virtual_tokens(self.model)
        out = self.backbone(**prefixed_inputs(self.model, prompts, input_ids, attention_mask, position_ids), **kwargs)
        out.last_hidden_state = out.last_hidden_state[:, prompts.shape[0]:]
        return out


def prefixed_logits(model, prompts: "torch.Tensor", input_ids, attention_mask=None, position_ids=None,
                    logits_to_keep=0, **kwargs):
    """The base model's output for `input_ids` after the virtual tokens, its logits at the input's own positions
    only: all of them, the last `logits_to_keep` (an int), or those a (rows, width) boolean tensor keeps,
    flattened row-major as transformers' own `logits_to_keep` gives them."""
    import torch
    out = peft_inner_model(model)(**prefixed_inputs(model, prompts, input_ids, attention_mask, position_ids), **kwargs)
    logits = out.logits[:, prompts.shape[0]:]
    if isinstance(logits_to_keep, torch.Tensor):
        logits = logits[logits_to_keep.to(torch.bool)]
    elif logits_to_keep:
        logits = logits[:, -logits_to_keep:]
    out.logits = logits
    return out
