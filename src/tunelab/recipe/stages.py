"""`stages:` — one recipe that chains runs: fine-tuning, then a self-improvement method on its result, and so on,
each stage a whole run of its own, the next one continuing the one before.

    name: smollm2-math-best
    model: {path: ...}          # stage 1's base
    data: ... lora: ... train: ... eval: ... score: ...   # every stage's settings unless it says otherwise
    stages:
      - name: sft               # the recipe as written above
      - name: rft               # these sections deep-merged over it: mappings merge key by key, a list or a
        data: {train: [...], replay: null}   # value replaces, null goes back to the default
        train: {method: rft, rft: {...}, lr: 1.0e-4}

Stage k (k > 1) starts from stage k-1's run directory (`model.path`: its best checkpoint; a LoRA stage continues
that adapter, so what the chain hands in is one adapter over the original base). Every stage but the last runs in
`<output_dir>/<name>.<stage>`; the last is the chain's own run directory, `<output_dir>/<name>`, so every verb that
takes a run (`eval`, `serve`, `handin`, `export`) takes the chain's result by its name. A stage gives no `model`
(it is the one before), `name` or `output_dir`. `score.handin` is checked on every stage (five checkpoints each):
the chain hands in its model, the most accurate stage that keeps every ability, not always the last.

Each stage's recipe is built and validated when the recipe loads: a mistake in the third stage is one error naming
`stages.2.train.lr` before the first trains.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field

from tunelab.recipe.fields import StrictSection

STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"
SECTIONS = ("data", "lora", "train", "eval", "score", "engine")


class StageConfig(StrictSection):
    """One stage: its name (its run directory's suffix) and the sections it changes, as written (merged over the
    recipe's and validated as a whole recipe when it loads)."""

    name: str = Field(pattern=STAGE_NAME)
    data: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    score: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        """The sections this stage gives, as written."""
        return {k: getattr(self, k) for k in SECTIONS if getattr(self, k) is not None}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` deep-merged over `base`: mappings key by key, any other value (a list included) replaces, None
    removes the key (its default then applies)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_raw(top: dict[str, Any], stages: list[StageConfig], k: int) -> dict[str, Any]:
    """Stage k's whole recipe, not yet validated: the recipe without `stages`, its changes merged over it, its
    run directory, and from the second stage on the one before as its model."""
    base = {key: value for key, value in top.items() if key != "stages"}
    raw = merged(base, stages[k].changes())
    raw["name"], raw["output_dir"] = stage_run_dir(top["name"], top.get("output_dir", "runs"), stages, k)
    if k > 0:
        before = stage_run_dir(top["name"], top.get("output_dir", "runs"), stages, k - 1)
        model = {key: value for key, value in (top.get("model") or {}).items()
                 if key in ("dtype", "quantization", "tokenizer")}  # how the base loads; its path is the run's
        raw["model"] = {**model, "path": str(Path(before[1]) / before[0])}
    return raw


def stage_run_dir(name: str, output_dir: str, stages: list[StageConfig], k: int) -> tuple[str, str]:
    """(name, output_dir) of stage k's run: `<name>.<stage>` for all but the last, the chain's own name last."""
    return (name if k == len(stages) - 1 else f"{name}.{stages[k].name}"), str(output_dir)

