"""The log-probabilities of target tokens, from hidden states and the output head, a chunk of positions at a time.

Every method scores tokens the same way: SFT's cross-entropy, DPO's answer log-probabilities, GRPO's per-token
ratios and entropies, distillation's two distributions, evaluation's log-likelihoods and the server's `logprobs`.
All of them go through `log_softmax_chunks`: the head's matmul for ~8 MB of fp32 logits (`chunk_rows`), in the
autocast dtype, then a fp32 log-softmax. No (positions × vocabulary) tensor is held in fp32, nor its gradient:
at Llama-3's 128k vocabulary the logits of a 64 × 256 batch alone are 8 GB in fp32.

- `target_logps`: per-token log p(target), with gradients (`TargetLogps`: the backward pass recomputes each
  chunk's softmax instead of keeping it), optionally the entropies of the distributions (a metric, no gradient).
- `ProjectedCrossEntropy`: their negated sum over a count — SFT's loss — with the gradients taken in the forward
  pass (a scalar loss's incoming gradient only scales them), which saves the backward's recomputation.
- `scored_logps`: a causal LM's per-token log-probabilities at the positions a mask names (DPO's answers, GRPO's
  completions), running the backbone once and projecting only those positions.

The numbers are autograd's over one fp32 log-softmax of `hidden @ weight.T` (tests/test_logprobs.py, losses and
gradients to 1e-6); under autocast the matmuls run in its dtype and the gradient of the logits is rounded to it
before them, as autograd rounds it.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.model.kernels import STANDARD_DECODERS


def chunk_rows(vocab: int) -> int:
    """Positions per chunk: ~8 MB of fp32 logits (2**21 values), at least 64."""
    return max(64, 2 ** 21 // vocab)


def head_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, head) of a causal LM (or its peft wrapper) whose logits are `head(backbone(...).last_hidden_state)`,
    so that only the positions that matter need projecting; None for others (their own forward then). A
    prompt-tuned model's backbone runs its virtual tokens first (`model.virtual_tokens.PrefixedBackbone`)."""
    from tunelab.model.virtual_tokens import PrefixedBackbone, prompt_tuned
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if (getattr(config, "model_type", None) not in STANDARD_DECODERS
            or float(getattr(config, "final_logit_softcapping", None) or 0.0)):
        return None
    backbone, head = getattr(base, base.base_model_prefix, None), base.get_output_embeddings()
    if not (isinstance(backbone, nn.Module) and isinstance(head, nn.Module)):
        return None
    return (PrefixedBackbone(model, backbone) if prompt_tuned(model) else backbone), head


def plain_linear(head: nn.Module) -> bool:
    """Whether `head` is a linear layer's weight alone (no bias, no hooks such as FSDP's), so its matmul may be
    run by hand a chunk at a time."""
    return (isinstance(head, nn.Linear) and head.bias is None and not head._forward_hooks
            and not head._forward_pre_hooks)


def matmul_dtype(x: torch.Tensor, weight: torch.Tensor | None) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype if weight is not None else x.dtype


def log_softmax_chunks(x: torch.Tensor, weight: torch.Tensor | None = None, temperature: float = 1.0):
    """Yield (start, end, fp32 log-softmax of rows start:end of `x @ weight.T / temperature`), ~8 MB of logits
    at a time; with no `weight`, `x` are the logits. Not differentiable: `TargetLogps` and
    `ProjectedCrossEntropy` carry the gradients."""
    dtype = matmul_dtype(x, weight)
    w = weight.to(dtype) if weight is not None else None
    n, vocab = x.shape[0], (w.shape[0] if w is not None else x.shape[-1])
    step = chunk_rows(vocab) if w is not None else max(1, 2 ** 21 // vocab)
    with torch.autocast(x.device.type, enabled=False):
        for lo in range(0, n, step):
            part = x[lo: lo + step]
            logits = (part.to(dtype) @ w.t() if w is not None else part).float()
            if temperature != 1.0:
                logits = logits / temperature
            yield lo, lo + part.shape[0], torch.log_softmax(logits, dim=-1)


def entropies_of(logp: torch.Tensor) -> torch.Tensor:
    """The entropy of each distribution of log-probabilities (..., vocab): a metric, taken without gradients."""
    with torch.no_grad():
        return -(logp.exp() * logp).sum(-1)


def target_logps(hidden: torch.Tensor, head: nn.Module | torch.Tensor, targets: torch.Tensor,
                 temperature: float = 1.0, entropies: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(targets[i] | hidden[i]) (n,) fp32, the entropies of those distributions (n,) or None).

    `hidden` (n, width) are the states that predict `targets` (n,); `head` is the output layer (a plain linear
    layer is projected a chunk at a time, any other module runs as it is) or its weight. The logits are divided
    by `temperature` first, as TRL's GRPO does."""
    weight = head if isinstance(head, torch.Tensor) else (head.weight if plain_linear(head) else None)
    if weight is None:  # a head with a bias, hooks or its own arithmetic: project all positions through it
        logits = head(hidden)
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return chosen, (entropies_of(logp) if entropies else None)
    chosen = TargetLogps.apply(hidden, weight, targets, temperature)
    if not entropies:
        return chosen, None
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.no_grad():
        for lo, hi, logp in log_softmax_chunks(hidden.detach(), weight.detach(), temperature):
            out[lo:hi] = entropies_of(logp)
    return chosen, out


class TargetLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T / T)[i, targets[i]] for every i, in fp32, chunk by chunk; the backward pass
    recomputes each chunk's softmax (one more matmul of the chunk) rather than keep (n × vocabulary) of them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for lo, hi, logp in log_softmax_chunks(hidden, weight, temperature):
            out[lo:hi] = logp.gather(1, targets[lo:hi, None])[:, 0]
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature = temperature
        ctx.dtype = matmul_dtype(hidden, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, temperature = ctx.dtype, ctx.temperature
        h, w = hidden.to(dtype), weight.to(dtype)
        grad_h = torch.empty_like(h) if want_hidden else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            for lo, hi, logp in log_softmax_chunks(h, w, temperature):
                g_out = grad_out[lo:hi, None].float()
                # d log p_t / d logits = (onehot_t - softmax) / T, times the incoming gradient
                g = logp.exp_().mul_(-g_out).scatter_add_(1, targets[lo:hi, None], g_out)
                if temperature != 1.0:
                    g = g / temperature
                g = g.to(dtype)  # rounded to the matmul dtype, as autograd rounds the logits' gradient
                if want_hidden:
                    grad_h[lo:hi] = g @ w
                if want_weight:  # summed in fp32 over the chunks
                    grad_w.addmm_(g.t().float(), h[lo:hi].float())
        return (grad_h.to(hidden.dtype) if want_hidden else None,
                grad_w.to(weight.dtype) if want_weight else None, None, None)


class FusedGrads:
    """The gradient buffers of a loss that takes its gradients in its forward pass, a chunk at a time
    (`ProjectedCrossEntropy`, `kl.ProjectedKL`). fp32 (`exact`): the weight's gradient is summed chunk by chunk;
    a lower dtype keeps every chunk's rounded gradient of the logits (`grad_logits`) for one matmul at the end
    (summing rounded per-chunk products would round differently from autograd)."""

    def __init__(self, h: torch.Tensor, w: torch.Tensor, dtype: torch.dtype, want_hidden: bool, want_weight: bool):
        n, vocab = h.shape[0], w.shape[0]
        self.exact = dtype == torch.float32
        self.grad_logits = torch.empty(n, vocab, dtype=dtype, device=h.device) if want_weight and not self.exact \
            else None
        self.grad_w = torch.zeros_like(w) if want_weight and self.exact else None
        self.grad_h = torch.empty_like(h) if want_hidden else None

    def saved(self, h: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor) -> tuple:
        """(the hidden states' gradient, the weight's), in their own dtypes, for `ctx.save_for_backward`."""
        grad_w = self.grad_logits.t() @ h if self.grad_logits is not None else self.grad_w
        return (self.grad_h.to(hidden.dtype) if self.grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None)


class ProjectedCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(hidden @ weight.T, targets, reduction="sum") / count` — minus the sum of `target_logps`
    over a count, SFT's loss — with the gradients for `hidden` and `weight` taken in the forward pass (a loss is a
    scalar: the backward pass only scales them by the incoming gradient). Under autocast the matmuls run in its
    dtype. The incoming gradient (1, or DDP's world size) multiplies after the rounding to that dtype where
    autograd multiplies before: equal for powers of two, within that dtype's rounding otherwise.

    Measured (3,200 positions, vocabulary 4,096, bf16): 270 → 160 ms forward + backward against autograd over a
    full log-softmax. In fp32 the head's gradient is summed chunk by chunk too, so not even the (positions,
    vocabulary) gradient is kept: 60 MB fewer a step at the MiniGPT benchmark's shape, whose fresh pages cost
    ~15,000 page faults a step (pretraining there ran 3 % faster)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, count: int):
        dtype = matmul_dtype(hidden, weight)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), weight.to(dtype)
        # fp32: the gradient of the mean needs no rounding, so 1/count rides in the matmuls' alpha
        grads = FusedGrads(h, w, dtype, want_hidden, want_weight)
        exact, grad_logits, grad_w, grad_h = grads.exact, grads.grad_logits, grads.grad_w, grads.grad_h
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for lo, hi, logp in log_softmax_chunks(h, w):
                t = targets[lo:hi, None]
                total -= logp.gather(1, t).sum()
                if not (want_hidden or want_weight):
                    continue
                g = logp.exp_().scatter_add_(1, t, torch.full(t.shape, -1.0, device=h.device))  # softmax - onehot
                scale = 1.0 / count
                if not exact:  # the gradient of the mean, rounded to the matmul dtype as autograd rounds it
                    g_low = grad_logits[lo:hi] if want_weight else torch.empty_like(g, dtype=dtype)
                    g, scale = torch.mul(g, scale, out=g_low), 1.0
                if want_hidden:
                    grad_h[lo:hi].addmm_(g, w, beta=0, alpha=scale)  # beta 0: the empty rows are not read
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h[lo:hi], alpha=scale)
            ctx.save_for_backward(*grads.saved(h, hidden, weight))
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                grad_w * grad_out if grad_w is not None else None, None, None)


def scored_logps(model: nn.Module, input_ids: torch.Tensor, scored: torch.Tensor, temperature: float = 1.0,
                 entropies: bool = False, index: torch.Tensor | None = None,
                 **inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, j + 1] | input_ids[:, :j + 1]) as (rows, width - 1) fp32, 0 where `scored` (rows,
    width - 1) is false; the entropies of those distributions alike, or None.

    `index`: the flat positions of `scored`'s true entries, in order (`flat_positions`), made on the host where
    the batch was built: then nothing here makes the host wait on the device (a boolean mask's size would). A
    model with a plain head runs its backbone once and projects only the scored positions; any other runs its
    own forward (its logits at every position) and is scored from those."""
    rows, width = scored.shape
    if index is None:
        index = scored.reshape(-1).nonzero().squeeze(1)
    index = index.to(input_ids.device)
    at = index + index // width  # the same positions in rows of width + 1: the model's outputs, not copied
    targets = input_ids.reshape(-1).index_select(0, at + 1)
    parts = head_parts(model)
    if parts is not None:
        hidden = parts[0](input_ids=input_ids, use_cache=False, **inputs).last_hidden_state
        chosen, spread = target_logps(hidden.reshape(-1, hidden.shape[-1]).index_select(0, at), parts[1], targets,
                                      temperature, entropies)
    else:
        logits = model(input_ids=input_ids, use_cache=False, **inputs).logits
        chosen, spread = target_logps(logits.reshape(-1, logits.shape[-1]).index_select(0, at), nn.Identity(),
                                      targets, temperature, entropies)

    def spread_out(values: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros(rows * width, dtype=torch.float32, device=values.device)
        return flat.index_put((index,), values).view(rows, width)

    return spread_out(chosen), (spread_out(spread) if spread is not None else None)


def flat_positions(mask) -> torch.Tensor:
    """The flat positions of a host mask's true entries (a numpy array or CPU tensor), as `scored_logps` and
    `LabelledLoss` take them: computed where the batch is built, so the device never has to report a count."""
    import numpy as np
    values = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return torch.from_numpy(np.flatnonzero(values).astype(np.int64))
