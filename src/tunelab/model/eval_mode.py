"""A model in eval mode for a block, put back as it was after: what a rollout, a reference or teacher forward, a
validation pass or a probe of the model wraps itself in."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def eval_mode(model):
    """`model` (every module under it) in eval mode for the block: no dropout, so nothing is drawn from the run's
    random state. After the block, also when it raises, each module is back in the mode it was in. Only the mode
    changes: a dropout module's `p`, the adapters and which parameters take gradients are left as they are (a
    method that trains without dropout says so where the run is set up: `train.dropout.disable_dropout`)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])  # as the model's own `train` does it (a wrapper's override included)
        for module, training in modes:
            if module.training != training:  # a module that was not in its parent's mode
                module.training = training
