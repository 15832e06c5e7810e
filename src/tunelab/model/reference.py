"""The one reference switch: the model DPO, IPO and GRPO's KL term compare the policy with, and the teacher
distillation defaults to, without a second copy of the model in memory.

The rule (TRL's, `DPOTrainer` / `GRPOTrainer` with a peft model):
- a model with an adapter (a peft model): the reference is the model with its adapter switched off (peft's
  `disable_adapter`) — the base the adapter started from;
- a run that continues an adapter loads a frozen copy of it beside the trained one (`model.lora.REFERENCE_ADAPTER`):
  the reference is that copy, the adapter as the run started (`model.lora.reference_weights`);
- a model without an adapter (a full fine-tune) has no reference: the switch raises, rather than let the policy
  be its own reference and every log-ratio be 0 by construction. A loss that needs none (SimPO, GRPO with β = 0)
  does not ask for one, and reference log-probabilities computed beforehand go straight to the loss
  (`dpo_loss.preference_loss`'s `reference`, `grpo_loss.grpo_loss`'s `ref_logps`).
Under the switch the model runs in eval mode (no dropout: `model.eval_mode`) and without gradients; after it,
also when the block raises, the trained adapter is the active one again, the same parameters take gradients and
every module is back in its own mode.
"""

from __future__ import annotations

import contextlib


def has_reference(model) -> bool:
    """Whether `model` carries its own reference: a peft model, whose adapter can be switched off."""
    return hasattr(model, "disable_adapter")


@contextlib.contextmanager
def reference_policy(model):
    """The block runs under `model`'s reference (the module docstring's rule), in eval mode, without gradients."""
    import torch

    from tunelab.model.eval_mode import eval_mode
    from tunelab.model.lora import reference_weights
    if not has_reference(model):
        raise ValueError("the reference is the model with its adapter switched off, and this model has no adapter "
                         "(a full fine-tune): train a LoRA adapter, use a loss that needs no reference (SimPO, GRPO "
                         "with beta 0), or give the loss precomputed reference log-probabilities")
    with torch.no_grad(), eval_mode(model), reference_weights(model):
        yield model
