"""Rotary position embeddings without `rotate_half`'s copies, bit for bit transformers' own, gradients too.

transformers' `apply_rotary_pos_emb` computes `q * cos + rotate_half(q) * sin`, where `rotate_half` negates
half of `q` into a new tensor and concatenates it with the other half into another: five passes over q and
five over k, and as many again in the backward pass. On a 256-wide model, doing without them made the
evaluation engine ~7 % faster (bench_eval's prompts, the same tokens out) and a training step ~5 % (fp32,
16 × 256 tokens, 4 layers: 0.746 → 0.706 s median). `rotary` writes `q * cos` once and adds the two half products into
its halves in place; `a + (-b)` and `a - b` round alike in IEEE arithmetic, so the result is identical, not
just close. `_Rotary` does the same for training, with the gradient written the same way.

`fast_rotary(model)` puts it in place of the function in the model's modeling module while tunelab runs the
model — the decoding core (`decoding/`) and the training loss (`train/methods/sft_loss.py`) — and only where a
check on random tensors finds the module's own function gives exactly the same outputs and gradients (other
architectures — partial rotary, interleaved, none at all — keep theirs). Scoped, not installed for good:
`model.generate` or a Hugging Face `Trainer` outside those blocks run transformers' own code (the
benchmarks compare against exactly that).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable

import torch

NAME = "apply_rotary_pos_emb"
_lock = threading.Lock()
_verified: dict[Callable, bool] = {}        # a module's function -> whether ours give exactly its outputs/grads
_installed: dict[str, list] = {}            # module name -> [its own function, fast_rotary blocks open]


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1):
    """`q * cos + rotate_half(q) * sin` (and the same for k), computed half by half into one new tensor."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` for cos/sin already broadcastable to x."""
    half = x.shape[-1] // 2
    y = x * cos
    y[..., :half] -= x[..., half:] * sin[..., :half]
    y[..., half:] += x[..., :half] * sin[..., half:]
    return y


class _Rotary(torch.autograd.Function):
    """`rotary` for training. The gradient of `x·cos + rotate_half(x)·sin` is `g·cos + rotate_half(g)·s'` with
    `s' = -(sin's halves swapped)`: `g1·c1 - g2·(-s2)` and `g2·c2 + g1·(-s1)` round exactly as the sums autograd
    makes through transformers' function, so the gradients are bit for bit its own too."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        ctx.save_for_backward(cos, sin)
        ctx.unsqueeze_dim = unsqueeze_dim
        return rotary(q, k, cos, sin, unsqueeze_dim)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin = ctx.saved_tensors
        cos = cos.unsqueeze(ctx.unsqueeze_dim)
        swapped = -sin.roll(sin.shape[-1] // 2, dims=-1).unsqueeze(ctx.unsqueeze_dim)
        return (*(_rotate(g, cos, swapped) if g is not None and wanted else None
                  for g, wanted in ((grad_q, ctx.needs_input_grad[0]), (grad_k, ctx.needs_input_grad[1]))),
                None, None, None)


def _matches(own: Callable) -> bool:
    """Whether `own` gives bit for bit what `rotary` gives, and the same gradients as `_Rotary`, on shapes
    like a prefill's (GQA included). Checked out of inference mode: a server enters its first fast_rotary inside
    it, where no tensor made takes part in autograd (and the answer is remembered for the process)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _matches_here(own)


def _matches_here(own: Callable) -> bool:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    grad_q, grad_k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)

    def outputs_and_grads(fn):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = fn(qq, kk, cos, sin)
        torch.autograd.backward(out, (grad_q, grad_k))
        return [*out, qq.grad, kk.grad]
    try:
        theirs = outputs_and_grads(own)
        ours = outputs_and_grads(lambda *a: _Rotary.apply(*a, 1))
    except Exception:       # another signature or contract: not the function this replaces
        return False
    return all(isinstance(t, torch.Tensor) and t.shape == o.shape and torch.equal(t, o)
               for t, o in zip(theirs, ours))


def _replacement(own: Callable) -> Callable:
    def apply(q, k, cos, sin, *args, **kwargs):
        if args or kwargs.keys() - {"unsqueeze_dim"} or q.shape[-1] % 2:
            return own(q, k, cos, sin, *args, **kwargs)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            if cos.requires_grad or sin.requires_grad:      # learned angles: autograd through transformers'
                return own(q, k, cos, sin, **kwargs)
            return _Rotary.apply(q, k, cos, sin, kwargs.get("unsqueeze_dim", 1))
        return rotary(q, k, cos, sin, **kwargs)
    apply.__wrapped__ = own
    return apply


def _module_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module if module is not None and callable(getattr(module, NAME, None)) else None


@contextmanager
def fast_rotary(model):
    """Within this block, `model`'s modeling module rotates q and k with `rotary` (when that is exact, and the
    `rotary` patch is active: `model.patches`)."""
    from tunelab.model.patches import active
    module = _module_of(model) if active("rotary") else None
    name = module.__name__ if module is not None else None
    counted = False
    if name is not None:
        with _lock:
            if name in _installed:
                _installed[name][1] += 1
                counted = True
            else:
                own = getattr(module, NAME)
                if own not in _verified:
                    _verified[own] = _matches(own)
                if _verified[own]:
                    setattr(module, NAME, _replacement(own))
                    _installed[name] = [own, 1]
                    counted = True
    try:
        yield
    finally:
        if counted:
            with _lock:
                state = _installed[name]
                state[1] -= 1
                if not state[1]:
                    setattr(module, NAME, state[0])
                    del _installed[name]
