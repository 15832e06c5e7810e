"""The plan as `tunelab plan` prints it: a table of GiB per device with the verdict, the changes that fit and the
rules' notes; or as JSON."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from tunelab.train.plan.sizes import gib

if TYPE_CHECKING:
    from tunelab.train.plan.estimate import Plan


def format_plan(plan: Plan) -> str:
    card = f"{plan.gpus} x {gib(plan.gpu_memory):.1f} GiB" if plan.gpus > 1 else f"{gib(plan.gpu_memory):.1f} GiB"
    lines = [f"tunelab plan: {plan.recipe} on {card} (per device)",
             f"model: {plan.model}", f"step:  {plan.step}", ""]
    width = max(len(k) for k in plan.categories) + 2
    for name, n in plan.categories.items():
        lines.append(f"  {name:<{width}}{gib(n):8.2f} GiB")
    lines.append("  " + "-" * (width + 12))
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    margin = plan.gpu_memory - plan.total
    how = f"{gib(margin):.1f} GiB to spare" if plan.fits else f"{gib(-margin):.1f} GiB over"
    lines.append(f"  {'total peak':<{width}}{gib(plan.total):8.2f} GiB   of {gib(plan.gpu_memory):.1f} GiB: "
                 f"{verdict} ({how})")
    if plan.advice:
        lines += ["", "to fit, each re-estimated:"]
        shown = [" ".join(a.sets) for a in plan.advice]
        w = max(len(s) for s in shown)
        for a, s in zip(plan.advice, shown):
            lines.append(f"  {s:<{w}}  -> {gib(a.total_bytes):5.1f} GiB  {'fits' if a.fits else 'does not fit'}"
                         f"  ({a.what})")
    elif not plan.fits:
        lines += ["", "no single recipe change tunelab knows makes it fit: a larger card, or more GPUs with FSDP"]
    lines += [""] + [f"note: {n}" for n in plan.notes]
    lines.append(f"traced one step on fake tensors (torch MemTracker) in {plan.trace_seconds:.1f} s")
    return "\n".join(lines)


def plan_to_json(plan: Plan) -> dict:
    out = asdict(replace(plan, config=None))
    del out["config"]  # the model's config: a Python object, shown as where it came from (`model`)
    out["categories_gib"] = {k: round(gib(v), 3) for k, v in plan.categories.items()}
    out["total_gib"] = round(gib(plan.total), 3)
    out["gpu_memory_gib"] = round(gib(plan.gpu_memory), 3)
    for a in out["advice"]:
        a["total_gib"] = round(gib(a["total_bytes"]), 3)
    return out
