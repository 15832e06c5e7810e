"""Where tunelab's training step spends its time — data, forward, backward, optimizer — measured from outside.

`tunelab.train.step.train_step` runs three module-level functions in turn: `_micro_batches` (the step's rows
collated; GRPO's rollouts too), `_forward_backward` and `_optimizer_step`. `StepSplit` wraps the three for the
length of a `with` block, and times the model's forward inside `_forward_backward` with a pre- and post-forward
hook on the model it is given; backward is the rest of that call (the loss's `.item()` included). Nothing in the
loop changes: its code and its results are the same, and the hooks cost a clock read each. On a CPU every kernel
has finished when its Python call returns, so the clock is exact; on a GPU the split would need synchronising
and is not offered.
"""

from __future__ import annotations

import statistics
import time


class StepSplit:
    """Per-step seconds of data, forward, backward and optimizer while the `with` block runs."""

    PARTS = ("data", "forward", "backward", "optimizer")

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def __enter__(self) -> StepSplit:
        from tunelab.train import step
        self._module = step
        self._saved = {name: getattr(step, name) for name in ("_micro_batches", "_forward_backward",
                                                              "_optimizer_step")}
        micro, fwd_bwd, opt = (self._saved[n] for n in ("_micro_batches", "_forward_backward", "_optimizer_step"))

        def timed_micro_batches(*args, **kwargs):
            t = time.perf_counter()
            out = micro(*args, **kwargs)
            self.steps.append({"data": time.perf_counter() - t, "forward": 0.0, "backward": 0.0, "optimizer": 0.0})
            return out

        def timed_forward_backward(run, train_model, *args, **kwargs):
            started: list[float] = []
            forward = [0.0]

            def pre(module, a, k):
                started.append(time.perf_counter())

            def post(module, a, k, out):
                forward[0] += time.perf_counter() - started.pop()
            hooks = [train_model.register_forward_pre_hook(pre, with_kwargs=True),
                     train_model.register_forward_hook(post, with_kwargs=True)]
            t = time.perf_counter()
            try:
                return fwd_bwd(run, train_model, *args, **kwargs)
            finally:
                total = time.perf_counter() - t
                for h in hooks:
                    h.remove()
                self.steps[-1]["forward"] += forward[0]
                self.steps[-1]["backward"] += total - forward[0]

        def timed_optimizer_step(*args, **kwargs):
            t = time.perf_counter()
            try:
                return opt(*args, **kwargs)
            finally:
                self.steps[-1]["optimizer"] += time.perf_counter() - t

        step._micro_batches = timed_micro_batches
        step._forward_backward = timed_forward_backward
        step._optimizer_step = timed_optimizer_step
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(self._module, name, fn)

    def median(self, skip: int) -> dict[str, float]:
        """Median seconds of each part over the steps after the first `skip` (warm-up)."""
        steps = self.steps[skip:] or self.steps
        return {part: statistics.median(s[part] for s in steps) for part in self.PARTS} if steps else {}


def split_text(split: dict[str, float], step_seconds: float | None = None) -> str:
    """'data 0.012 s (2 %), forward …' — the shares are of the parts' sum, or of `step_seconds` when given
    (the step's wall time: what is left is the loop's own work, metrics and checks)."""
    if not split:
        return "no steps timed"
    whole = step_seconds or sum(split.values())
    text = ", ".join(f"{k} {v:.3f} s ({v / whole:.0%})" for k, v in split.items())
    return text + (f"; other {max(0.0, whole - sum(split.values())):.3f} s" if step_seconds else "")
