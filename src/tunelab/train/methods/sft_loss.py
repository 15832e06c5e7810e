"""The training loss, with the vocabulary projection run only where a label is.

A causal LM's forward computes logits at every position, then the loss ignores all but the labelled ones.
With answer-only loss most positions are prompt: for the competition's data about 70 %, and Llama-3's
128k-vocabulary logits of a 64 × 256 batch are 8 GB in fp32 (twice that with their gradient). `LabelledLoss`
runs the model's backbone, gathers the hidden states that predict a label, and projects only those.
The result is the same sum of token cross-entropies divided by the same count as transformers' loss.

The projection and the cross-entropy run together, a chunk of positions at a time (`ProjectedCrossEntropy`):
each chunk's logits stay in cache, and their gradient (softmax minus one-hot, times 1/count) is taken there
and then instead of after a log-softmax over every position's logits. Same arithmetic as autograd's: logits
in the autocast dtype, log-softmax in fp32, the gradient rounded to the autocast dtype before the matmuls.
Measured here (3,200 positions, vocabulary 4,096, bf16): 270 → 160 ms forward + backward, and none of the
fp32 logits, log-probabilities and their gradient over all positions are ever held at once. In fp32 the head's
gradient is summed chunk by chunk too, so not even the (positions, vocabulary) gradient is kept: 60 MB fewer
a step at the MiniGPT benchmark's shape (4 GB for Llama-3's vocabulary over 8k positions), whose fresh pages
cost ~15,000 page faults a step; pretraining there ran 3 % faster (bench_pretrain's shape, alternated in one
process, median of 5).

It applies to architectures whose head is a plain linear layer over the backbone's last hidden state;
others (logit soft-capping, scaled logits, mixture-of-experts auxiliary losses) use the model's own forward.
Either way the forward pass rotates q and k without copies where that is exact (`decoding/rotary.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.decoding.attention import additive_for_eager
from tunelab.decoding.rotary import fast_rotary

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
        parts = plain_parts(model)
        self.labelled_only = parts is not None
        # a tuple, not attributes: they are already submodules of `model` and must not be registered twice
        self._parts = parts or (None, None)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int,
                **inputs) -> torch.Tensor:
        inputs = model_inputs(self.model, inputs)
        if not self.labelled_only:
            with fast_rotary(self.model):
                return self.model(input_ids=input_ids, labels=labels, use_cache=False,
                                  num_items_in_batch=num_items_in_batch, **inputs).loss
        hidden = self.hidden_states(input_ids, inputs)
        return self.cross_entropy(hidden[:, :-1], labels[:, 1:], num_items_in_batch)

    def hidden_states(self, input_ids: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The backbone's last hidden states (rows, width, hidden): what the head projects."""
        with fast_rotary(self.model):
            return self._parts[0](input_ids=input_ids, use_cache=False, **inputs).last_hidden_state

    def cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor, count: int) -> torch.Tensor:
        """The summed cross-entropy of the labelled `targets` predicted from `hidden` (both shifted), / `count`."""
        head = self._parts[1]
        where = targets != IGNORE
        if not plain_linear(head):  # run as the module it is
            logits = head(hidden[where]).float()  # (labelled positions, vocab)
            return F.cross_entropy(logits, targets[where], reduction="sum") / count
        return ProjectedCrossEntropy.apply(hidden[where], head.weight, targets[where], count)


def plain_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(backbone, head) of a causal LM whose logits are `head(backbone(...).last_hidden_state)` with a linear
    head, so that only the positions that matter need projecting; None for others (their own forward then)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD:
        return None
    backbone, head = getattr(base, base.base_model_prefix, None), base.get_output_embeddings()
    return (backbone, head) if isinstance(backbone, nn.Module) and isinstance(head, nn.Linear) else None


def plain_linear(head: nn.Linear) -> bool:
    """Whether `head` is its weight alone (no bias, no hooks such as FSDP's), so its matmul may be run by hand."""
    return head.bias is None and not head._forward_hooks and not head._forward_pre_hooks


def model_inputs(model: nn.Module, inputs: dict) -> dict:
    """The batch's other inputs as the model's forward takes them: a shared prefix's 4-D mask, for eager
    attention, made additive."""
    if "attention_mask" in inputs:
        inputs = {**inputs, "attention_mask": additive_for_eager(model.config, inputs["attention_mask"])}
    return inputs


class ProjectedCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(hidden @ weight.T, targets, reduction="sum") / count`, computed a chunk of positions
    (~8 MB of fp32 logits) at a time, with the gradients for `hidden` and `weight` taken in the forward pass (a
    loss is a scalar: the backward pass only scales them by the incoming gradient). Under autocast the matmuls
    run in its dtype. The incoming gradient (1, or DDP's world size) multiplies after the rounding to that dtype
    where autograd multiplies before: equal for powers of two, within that dtype's rounding otherwise."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, count: int):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), weight.to(dtype)
        n, vocab = h.shape[0], w.shape[0]
        chunk = max(64, 2 ** 21 // vocab)  # ~8 MB of fp32 logits
        # fp32: the gradient of the mean needs no rounding, so 1/count rides in the matmuls' alpha and the weight's
        # gradient is summed chunk by chunk; a lower dtype rounds each chunk's gradient as autograd does and keeps
        # all of them for one matmul (summing rounded per-chunk products would round differently)
        exact = dtype == torch.float32
        grad_logits = torch.empty(n, vocab, dtype=dtype, device=h.device) if want_weight and not exact else None
        grad_w = torch.zeros_like(w) if want_weight and exact else None
        grad_h = torch.empty_like(h) if want_hidden else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(device, enabled=False):
            for lo in range(0, n, chunk):
                t = targets[lo: lo + chunk, None]
                logp = torch.log_softmax((h[lo: lo + chunk] @ w.t()).float(), dim=-1)
                total -= logp.gather(1, t).sum()
                if not (want_hidden or want_weight):
                    continue
                g = logp.exp_().scatter_add_(1, t, torch.full(t.shape, -1.0, device=h.device))  # softmax - onehot
                scale = 1.0 / count
                if not exact:  # the gradient of the mean, rounded to the matmul dtype as autograd rounds it
                    g_low = grad_logits[lo: lo + chunk] if want_weight else torch.empty_like(g, dtype=dtype)
                    g, scale = torch.mul(g, scale, out=g_low), 1.0
                if want_hidden:
                    grad_h[lo: lo + chunk].addmm_(g, w, beta=0, alpha=scale)  # beta 0: the empty rows are not read
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h[lo: lo + chunk], alpha=scale)
            if grad_logits is not None:
                grad_w = grad_logits.t() @ h
            grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        ctx.save_for_backward(grad_h.to(hidden.dtype) if want_hidden else None, grad_w)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                grad_w * grad_out if grad_w is not None else None, None, None)
