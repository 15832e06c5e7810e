"""Competition scoring: the low-parameter ratio and the stage formulas.

Module-level imports are stdlib only so `tunelab score` starts instantly; `ratio` imports torch/peft lazily.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from tunelab.errors import TunelabError

# score = (1 - RATIO_FACTOR * ratio) * 0.3 + accuracy * 0.7
RATIO_FACTOR = {"stage1": 1.0, "stage2": 10.0}
FORMULA_TEXT = {"stage1": "(1 - ratio) * 0.3 + accuracy * 0.7", "stage2": "(1 - 10 * ratio) * 0.3 + accuracy * 0.7"}


def low_param_ratio(trainable: int, total: float) -> float:
    """trainable / total; `total` may be a nominal figure such as 8.03e9."""
    if not total > 0 or math.isinf(total):
        raise TunelabError(f"total parameters must be a positive number, got {total}")
    if not 0 <= trainable <= total:
        raise TunelabError(f"trainable parameters ({trainable}) must be between 0 and the total ({total:g})")
    return trainable / total


def competition_score(formula: str, accuracy: float, ratio: float) -> float:
    """The stage formula on accuracy and ratio, both fractions in 0..1."""
    if formula not in RATIO_FACTOR:
        raise TunelabError(f"unknown score formula '{formula}' (known: {', '.join(RATIO_FACTOR)})")
    if not 0 <= accuracy <= 1:
        raise TunelabError(f"accuracy must be in 0..1, got {accuracy}")
    if not 0 <= ratio <= 1:
        raise TunelabError(f"ratio must be in 0..1, got {ratio}")
    return (1 - RATIO_FACTOR[formula] * ratio) * 0.3 + accuracy * 0.7


def parse_accuracy(text: str) -> float:
    """'0.7161' or '71.61%' -> 0.7161. A bare number above 1 is rejected: it is ambiguous, not silently /100."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = Decimal(raw[:-1].strip() if percent else raw)
    except InvalidOperation as err:
        raise TunelabError(f"accuracy '{text}' is not a number (give 0.7161 or 71.61%)") from err
    if not value.is_finite():
        raise TunelabError(f"accuracy '{text}' is not a finite number")
    if percent:
        value /= 100  # Decimal keeps '71.61%' exactly 0.7161, where 71.61 / 100 in floats may not be
    elif value > 1:
        raise TunelabError(f"accuracy '{text}' is above 1: give a fraction (e.g. 0.7161) or a percentage "
                           "with '%' (e.g. 71.61%)")
    if not 0 <= value <= 1:
        raise TunelabError(f"accuracy '{text}' is out of range (0..1, or 0%..100%)")
    return float(value)


def adapter_param_counts(model: str, rank: int, target: str | None, trainable_tokens: int = 0,
                         adapter: str = "lora", virtual_tokens: int = 20) -> dict:
    """Count an adapter's trainable and the base's total parameters on the meta device: no weights, seconds even
    for 8B. `adapter`: lora, ia3, vera, ln_tuning or prompt_tuning (`lora.adapter`); `target` None: LoRA's
    default layers, or peft's for the other kinds. `trainable_tokens`: that many output-head rows trained beside a
    LoRA adapter. `virtual_tokens`: prompt tuning's count (each one embedding)."""
    from tunelab.model.lora import AdapterSpec, add_adapter, count_parameters, resolve_target_modules
    from tunelab.model.presets import build_on_meta, load_config
    from tunelab.recipe.lora import adapter_targets

    base = build_on_meta(load_config(model))
    rows = None
    if trainable_tokens:
        from tunelab.model.untrained_tokens import head_module_name
        if not 0 < trainable_tokens <= base.get_output_embeddings().weight.shape[0]:
            raise TunelabError(f"{trainable_tokens} trainable token rows: the model has "
                               f"{base.get_output_embeddings().weight.shape[0]:,}", field="trainable_tokens")
        rows = {head_module_name(base): list(range(trainable_tokens))}  # which rows does not change the count
    target = adapter_targets(adapter, target)
    # alpha and dropout do not change the counts
    peft_model = add_adapter(base, AdapterSpec(adapter, rank, 2 * rank, 0.0, target, virtual_tokens=virtual_tokens),
                             rows)
    trainable, total = count_parameters(peft_model)
    targets = getattr(peft_model.peft_config["default"], "target_modules", None) or []
    return {"model": model, "adapter": adapter, "rank": rank,
            "target": resolve_target_modules(target) if target is not None else sorted(targets),
            "trainable": trainable, "total": total}
