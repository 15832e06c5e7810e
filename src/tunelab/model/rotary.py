"""Rotary position embeddings for inference, without `rotate_half`'s copies and bit for bit the same.

transformers' `apply_rotary_pos_emb` computes `q * cos + rotate_half(q) * sin`, where `rotate_half` negates
half of `q` into a new tensor and concatenates it with the other half into another: five passes over q and
five over k. On a 256-wide model that was ~7 % of the evaluation engine's time (bench_eval's prompts, the
same tokens out before and after). `rotary` writes `q * cos` once and adds the two half products into its halves in
place; `a + (-b)` and `a - b` round alike in IEEE arithmetic, so the result is identical, not just close.

`fast_rotary(model)` puts it in place of the function in the model's modeling module while the decoding
core runs the model (`model/decoding.py`), and only where a check on random tensors finds the module's own
function gives exactly the same result (other architectures — partial rotary, interleaved, none at all —
keep theirs). With autograd recording it calls the module's own function, so training is untouched even
if another thread runs the model meanwhile. Scoped, not installed for good: `model.generate` outside the
decoding core runs transformers' own code (the evaluation benchmark compares against exactly that).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable

import torch

NAME = "apply_rotary_pos_emb"
_lock = threading.Lock()
_verified: dict[Callable, bool] = {}        # a module's function -> whether `rotary` gives exactly its result
_installed: dict[str, list] = {}            # module name -> [its own function, decoding calls inside]


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1):
    """`q * cos + rotate_half(q) * sin` (and the same for k), computed half by half into one new tensor."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    half = q.shape[-1] // 2
    out = []
    for x in (q, k):
        y = x * cos
        y[..., :half] -= x[..., half:] * sin[..., :half]
        y[..., half:] += x[..., :half] * sin[..., half:]
        out.append(y)
    return out[0], out[1]


def _matches(own: Callable) -> bool:
    """Whether `own` gives bit for bit what `rotary` gives, on shapes like a prefill's (GQA included)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    try:
        theirs = own(q, k, cos, sin)
    except Exception:       # another signature or contract: not the function this replaces
        return False
    ours = rotary(q, k, cos, sin)
    return (isinstance(theirs, tuple) and len(theirs) == 2
            and all(isinstance(t, torch.Tensor) and t.shape == o.shape and torch.equal(t, o)
                    for t, o in zip(theirs, ours)))


def _replacement(own: Callable) -> Callable:
    def apply(q, k, cos, sin, *args, **kwargs):
        if (args or kwargs.keys() - {"unsqueeze_dim"} or q.shape[-1] % 2
                or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))):
            return own(q, k, cos, sin, *args, **kwargs)
        return rotary(q, k, cos, sin, **kwargs)
    apply.__wrapped__ = own
    return apply


def _module_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module if module is not None and callable(getattr(module, NAME, None)) else None


@contextmanager
def fast_rotary(model):
    """Within this block, `model`'s modeling module rotates q and k with `rotary` (when that is exact)."""
    module = _module_of(model)
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
