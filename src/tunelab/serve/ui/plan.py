"""The Train tab's memory plan: will the edited recipe's training step fit a chosen card?

The answer is `tunelab plan RECIPE --gpu-memory SIZE`'s own (`train.plan`: one step traced on fake tensors, no
weights and no GPU; the changes that would fit when it does not), on the recipe the editor holds once it passes
the same check as Start (its only file a temporary one inside the runs directory, removed at once). A model whose
step takes less than `TINY_BYTES` gets one line instead of the table: any card, and the CPU, trains it.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.recipe import Recipe
from tunelab.train.plan.sizes import parse_memory_size

TINY_BYTES = 1 << 30
CARDS = {   # common cards by their memory as nvidia-smi counts it; any size `--gpu-memory` takes may be typed
    "T4 · 16 GiB": "16GiB",
    "RTX 3060 · 12 GiB": "12GiB",
    "RTX 4060 Ti / 4080 · 16 GiB": "16GiB",
    "RTX 3090 / 4090 / A10 · 24 GiB": "24GiB",
    "V100 · 32 GiB": "32GiB",
    "A100 · 40 GiB": "40GiB",
    "L40S / A6000 · 48 GiB": "48GiB",
    "A100 / H100 · 80 GiB": "80GiB",
}
DEFAULT_CARD = "RTX 3090 / 4090 / A10 · 24 GiB"


def plan_text(recipe: Recipe, card: str, recipe_file: str | Path | None = None, tiny: int = TINY_BYTES) -> str:
    """`tunelab plan`'s report of `recipe` on one card (`card`: a name of `CARDS` or a size such as 20GiB), with
    its advice when the step does not fit, as a markdown code block; one line for a tiny model. `recipe_file`:
    where the recipe came from (a `model.path` run that does not exist yet is planned from the recipe beside it
    that makes it)."""
    from tunelab.train.plan.advice import advise
    from tunelab.train.plan.estimate import plan_memory
    from tunelab.train.plan.report import format_plan

    size = parse_memory_size(CARDS.get(card, card or ""), field="gpu")
    plan = plan_memory(recipe, size, 1, recipe_file=recipe_file)
    if plan.total < tiny:
        return (f"A tiny model: one training step takes {plan.total / 2**20:.0f} MiB, so any card (and the CPU) "
                f"trains it; no plan needed. 小模型：任何显卡（以及 CPU）都能训练。")
    if not plan.fits:
        plan.advice = advise(recipe, plan)
    return f"```\n{format_plan(plan)}\n```"
