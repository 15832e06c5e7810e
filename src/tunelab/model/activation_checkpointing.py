"""Activation (gradient) checkpointing: each decoder layer's activations are recomputed in the backward pass
instead of kept, for far less memory at the cost of about a third more compute.

Non-reentrant, torch's recommended form: frozen inputs (LoRA's base) need no `requires_grad` trick, and the RNG
is replayed, so dropout draws the same masks in the recompute and the gradients equal a run without it
(tests/test_gpu_fit.py). The training loop keeps tunelab's fast rotary path in place for the whole loop so that
the recompute runs the same function as the forward (`model/kernels/rotary.py`).
"""

from __future__ import annotations

KWARGS = {"use_reentrant": False}


def enable_activation_checkpointing(model) -> None:
    """Turn it on for a Hugging Face model (or a peft model's base): transformers 5's
    `activation_checkpointing_enable`, or `gradient_checkpointing_enable` where that is all there is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=KWARGS)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=KWARGS)
