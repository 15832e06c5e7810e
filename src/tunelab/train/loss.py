"""The training loss, with the vocabulary projection run only where a label is.

A causal LM's forward computes logits at every position, then the loss ignores all but the labelled ones.
With answer-only loss most positions are prompt: for the competition's data about 70 %, and Llama-3's
128k-vocabulary logits of a 64 × 256 batch are 8 GB in fp32 (twice that with their gradient). `LabelledLoss`
runs the model's backbone, gathers the hidden states that predict a label, and projects only those.
The result is the same sum of token cross-entropies divided by the same count as transformers' loss.

It applies to architectures whose head is a plain linear layer over the backbone's last hidden state;
others (logit soft-capping, scaled logits, mixture-of-experts auxiliary losses) use the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
# model_type -> head is `lm_head(last_hidden_state)` and the loss is plain token cross-entropy (checked
# against transformers 5.x's modeling files)
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"}


class LabelledLoss(nn.Module):
    """Wraps a causal LM (or its peft wrapper); `forward(**batch, num_items_in_batch=N)` returns the loss.

    Being an `nn.Module` that owns the model, it is what DDP wraps, so gradient hooks fire as usual.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = head = None
        if getattr(base.config, "model_type", None) in PLAIN_HEAD:
            backbone = getattr(base, base.base_model_prefix, None)
            head = base.get_output_embeddings()
        self.labelled_only = isinstance(backbone, nn.Module) and isinstance(head, nn.Linear)
        # a tuple, not attributes: they are already submodules of `model` and must not be registered twice
        self._parts = (backbone, head)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int,
                **inputs) -> torch.Tensor:
        if not self.labelled_only:
            return self.model(input_ids=input_ids, labels=labels, use_cache=False,
                              num_items_in_batch=num_items_in_batch, **inputs).loss
        backbone, head = self._parts
        hidden = backbone(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state
        targets = labels[:, 1:]
        where = targets != IGNORE
        logits = head(hidden[:, :-1][where]).float()  # (labelled positions, vocab)
        return F.cross_entropy(logits, targets[where], reduction="sum") / num_items_in_batch
