"""The training loss, with the vocabulary projection run only where a label is.

A causal LM's forward computes logits at every position, then the loss ignores all but the labelled ones.
With answer-only loss most positions are prompt: for the competition's data about 70 %, and Llama-3's
128k-vocabulary logits of a 64 × 256 batch are 8 GB in fp32 (twice that with their gradient). `LabelledLoss`
runs the model's backbone, gathers the hidden states that predict a label, and projects only those, a chunk at a
time with the gradients taken in the same pass (`model.kernels.logprobs.ProjectedCrossEntropy`, the one
log-probability kernel every method shares). The result is the same sum of token cross-entropies divided by the
same count as transformers' loss.

It applies to architectures whose head is a plain projection of the backbone's last hidden state
(`head_parts`); others (logit soft-capping, scaled logits, mixture-of-experts auxiliary losses) use the model's
own forward. Either way the forward pass rotates q and k without copies where that is exact (`model/kernels/rotary.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.data.packing import IGNORE
from tunelab.model.kernels.attention import additive_for_eager
from tunelab.model.kernels.rotary import fast_rotary
from tunelab.model.kernels.logprobs import ProjectedCrossEntropy, head_parts, plain_linear, target_logps


class LabelledLoss(nn.Module):
    """Wraps a causal LM (or its peft wrapper); `forward(**batch, num_items_in_batch=N)` returns the loss.

    Being an `nn.Module` that owns the model, it is what DDP wraps, so gradient hooks fire as usual.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        parts = head_parts(model)
        self.labelled_only = parts is not None
        # a tuple, not attributes: they are already submodules of `model` and must not be registered twice
        self._parts = parts or (None, None)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int,
                label_index: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """`label_index`: the flat positions of `labels[:, 1:]`'s labelled tokens, found on the host where the
        batch was built (`sft.collate_labelled`), so that gathering them never waits on the device."""
        inputs = model_inputs(self.model, inputs)
        if not self.labelled_only:
            with fast_rotary(self.model):
                return self.model(input_ids=input_ids, labels=labels, use_cache=False,
                                  num_items_in_batch=num_items_in_batch, **inputs).loss
        hidden = self.hidden_states(input_ids, inputs)
        if label_index is None:
            return self.cross_entropy(hidden[:, :-1], labels[:, 1:], num_items_in_batch)
        width = labels.shape[1] - 1
        at = label_index.to(hidden.device)
        at = at + at // width  # the same positions in rows of width + 1 (views of the outputs, no copies)
        return self.projected(hidden.reshape(-1, hidden.shape[-1]).index_select(0, at),
                              labels.reshape(-1).index_select(0, at + 1), num_items_in_batch)

    def hidden_states(self, input_ids: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The backbone's last hidden states (rows, width, hidden): what the head projects."""
        with fast_rotary(self.model):
            return self._parts[0](input_ids=input_ids, use_cache=False, **inputs).last_hidden_state

    def cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor, count: int) -> torch.Tensor:
        """The summed cross-entropy of the labelled `targets` predicted from `hidden` (both shifted), / `count`."""
        where = targets != IGNORE
        return self.projected(hidden[where], targets[where], count)

    def projected(self, hidden: torch.Tensor, targets: torch.Tensor, count: int) -> torch.Tensor:
        """The summed cross-entropy of `targets` (n,) predicted from `hidden` (n, width), / `count`."""
        head = self._parts[1]
        if not plain_linear(head):  # run as the module it is
            return -target_logps(hidden, head, targets)[0].sum() / count
        return ProjectedCrossEntropy.apply(hidden, head.weight, targets, count)


def model_inputs(model: nn.Module, inputs: dict) -> dict:
    """The batch's other inputs as the model's forward takes them: a shared prefix's 4-D mask, for eager
    attention, made additive."""
    if "attention_mask" in inputs:
        inputs = {**inputs, "attention_mask": additive_for_eager(model.config, inputs["attention_mask"])}
    return inputs
