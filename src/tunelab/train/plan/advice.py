"""What to change so that a run fits its card, each change re-estimated by tracing the changed step, and the check
a GPU run makes before its model loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.train.plan.categories import CUDA_CONTEXT
from tunelab.train.plan.estimate import Advice, Plan, plan_memory, plan_step
from tunelab.train.plan.sizes import GiB, gib
from tunelab.train.plan.spec import step_spec

if TYPE_CHECKING:
    from tunelab.recipe import Recipe


def advise(recipe: Recipe, plan: Plan) -> list[Advice]:
    """Changes that make a run that does not fit fit, each re-estimated: gradient checkpointing, a smaller
    micro-batch with more accumulation (the same rows a step), a 4-bit base (LoRA), 8-bit AdamW; when none fits
    alone, the first combination of them (in that order) that does. A change that saves under 0.05 GiB is left
    out."""
    if plan.gpu_memory <= CUDA_CONTEXT:
        return []  # the CUDA context alone fills the card
    config, source = plan.config, plan.model  # the model the plan traced, wherever it found its config
    tc = recipe.train
    knobs: list[tuple[dict, str]] = []
    if not getattr(tc, "gradient_checkpointing", True):
        knobs.append(({"train.gradient_checkpointing": True},
                      "recompute each layer's activations in the backward pass: ~30 % more compute"))
    if tc.batch_size > 1:
        knobs.append(({}, _SMALLER_BATCH))
    if getattr(recipe.model, "quantization", None) == "none" and recipe.lora.enabled and recipe.model.path:
        knobs.append(({"model.quantization": "nf4"}, "QLoRA: the frozen base in 4-bit NF4, needs bitsandbytes"))
    if getattr(tc, "optimizer", None) == "adamw":
        knobs.append(({"train.optimizer": "adamw_8bit"}, "8-bit AdamW moments, needs bitsandbytes"))

    def useful(a: Advice | None) -> bool:
        return a is not None and a.total_bytes < plan.total - GiB // 20

    out: list[Advice] = []
    for changes, what in knobs:
        a = (_smaller_batch(recipe, plan, config, source, {}) if what == _SMALLER_BATCH
             else _advice(recipe, plan, config, source, changes, what))
        if useful(a):
            out.append(a)
    if any(a.fits for a in out):
        return out
    combined: dict = {}
    for changes, what in knobs:
        if what == _SMALLER_BATCH:
            a = _smaller_batch(recipe, plan, config, source, combined)
        else:
            combined.update(changes)
            a = _advice(recipe, plan, config, source, combined, "together")
        if a is not None and a.fits:
            a.what = "together"
            out.append(a)
            break
    return out


_SMALLER_BATCH = "a smaller micro-batch"  # searched by `_smaller_batch`, not one fixed change


def _advice(recipe: Recipe, plan: Plan, config, source: str, changes: dict, what: str) -> Advice | None:
    estimate = _estimate(recipe, changes, config, source, plan)
    if estimate is None:
        return None
    sets = [f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items()]
    return Advice(sets, what, estimate.total, estimate.fits)


def _smaller_batch(recipe: Recipe, plan: Plan, config, source: str, changes: dict) -> Advice | None:
    """The largest micro-batch (halving) that fits with `changes`, grad_accum raised to keep the rows a step;
    a batch of 1 when none does."""
    tc = recipe.train
    batch, accum, last = tc.batch_size, tc.grad_accum, None
    while batch > 1:
        batch, accum = (batch + 1) // 2, accum * 2
        last = _advice(recipe, plan, config, source,
                       {**changes, "train.batch_size": batch, "train.grad_accum": accum},
                       f"the same {tc.batch_size * tc.grad_accum} rows a step"
                       + (f" on each of the {plan.gpus} GPUs" if plan.gpus > 1 else ""))
        if last is None or last.fits:
            break
    return last


def _estimate(recipe: Recipe, changes: dict, config, source: str, plan: Plan) -> Plan | None:
    """The plan of the recipe with `changes` (dotted keys), or None when the recipe refuses them."""
    from pydantic import ValidationError
    changed = recipe.model_copy(deep=True)
    try:
        for key, value in changes.items():
            section, name = key.split(".")
            setattr(getattr(changed, section), name, value)
    except (ValidationError, AttributeError, ValueError):
        return None
    return plan_step(changed, step_spec(changed, config), source, plan.gpu_memory, plan.gpus)


def check_fits(recipe: Recipe, device, world: int) -> tuple[Plan | None, str | None]:
    """At the start of a run on a GPU: (the plan for the card it is on, or None off a GPU; why it would not fit
    and what would make it, or None). A run that cannot fit fails in seconds instead of at its first step's
    out-of-memory after minutes of loading."""
    if device.type != "cuda":
        return None, None
    import torch
    props = torch.cuda.get_device_properties(device)
    plan = plan_memory(recipe, props.total_memory, world)
    if plan.fits:
        return plan, None
    changes = "; ".join(f"{' '.join(a.sets)} ({a.what}): {gib(a.total_bytes):.1f} GiB"
                        for a in advise(recipe, plan) if a.fits)
    return plan, (f"this run needs about {gib(plan.total):.1f} GiB a device and {props.name} has "
                  f"{gib(props.total_memory):.1f} GiB (by tunelab's memory plan of one training step)"
                  + (f"; what fits: {changes}" if changes else "")
                  + ". The plan is an estimate: train.memory_check: false starts the run anyway")
