"""The plan of one recipe on one card: its step traced (`trace.measure_step`), its bytes per device by category
(`categories.device_categories`), and whether they fit; the changes `advice` found to fit are part of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.train.plan.categories import device_categories
from tunelab.train.plan.config import model_config
from tunelab.train.plan.spec import StepSpec, describe_step, step_spec
from tunelab.train.plan.trace import measure_step

if TYPE_CHECKING:
    from tunelab.recipe import Recipe


@dataclass
class Advice:
    """One change to the recipe, re-estimated."""

    sets: list[str]            # the --set arguments
    what: str
    total_bytes: int
    fits: bool


@dataclass
class Plan:
    """One recipe's step on `gpus` cards of `gpu_memory` bytes: its bytes per device and the verdict."""

    recipe: str
    model: str                 # where the config came from
    step: str                  # the step traced, in words
    gpus: int
    gpu_memory: int
    categories: dict[str, int]  # name -> bytes per device, in table order, the total excluded
    total: int
    fits: bool
    trace_seconds: float
    notes: list[str] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    config: Any = field(default=None, repr=False, compare=False)  # the model config traced: `advise` changes the rest


def plan_memory(recipe: Recipe, gpu_memory_bytes: int, gpus: int = 1, recipe_file: str | Path | None = None) -> Plan:
    """The per-device memory of one training step of `recipe` on `gpus` GPUs of `gpu_memory_bytes` each.
    `recipe_file`, where the recipe was read from, lets a `model.path` run that does not exist yet be planned from
    the recipe beside it that produces it (`config.model_config`)."""
    if gpus < 1:
        raise TunelabError(f"must be at least 1, got {gpus}", field="gpus")
    config, source = model_config(recipe, recipe_file)
    spec = step_spec(recipe, config)
    return plan_step(recipe, spec, source, gpu_memory_bytes, gpus)


_TRACED: dict[str, object] = {}   # a step's trace by its spec: advice re-plans variants, a caller re-plans a recipe
_KEEP = 32


def traced_step(spec: StepSpec):
    """`measure_step(spec)`, traced once per process for an equal spec (the trace is a pure function of it, and
    an 8B model's takes seconds to minutes on a CPU)."""
    key = repr((spec.config.to_json_string(use_diff=False),
                [getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "config"]))
    if key not in _TRACED:
        if len(_TRACED) >= _KEEP:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = measure_step(spec)
    return _TRACED[key]


def plan_step(recipe: Recipe, spec: StepSpec, source: str, gpu_memory_bytes: int, gpus: int) -> Plan:
    """The plan of `spec`, the step of `recipe` with the model config from `source`: what `advise` re-estimates
    with the recipe changed."""
    step = traced_step(spec)
    cats, notes = device_categories(recipe, spec, step, gpus)
    total = sum(cats.values())
    return Plan(recipe=recipe.name, model=source, step=describe_step(spec, step.trainable_params), gpus=gpus,
                gpu_memory=gpu_memory_bytes, categories=cats, total=total, fits=total <= gpu_memory_bytes,
                trace_seconds=step.trace_seconds, notes=notes, config=spec.config)
