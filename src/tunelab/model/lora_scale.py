"""A LoRA adapter with its update multiplied by a scale s in (0, 1]: the merged weights are W + s·ΔW, on the
straight line from the base (s = 0) to the fine-tuned model (s = 1). Interpolating weights toward the base is
WiSE-FT's (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): it keeps much of what the base could
do for little of the task's gain, at no training cost — only an evaluation per scale
(`tunelab.pipeline.scale_frontier`).

How. peft applies ΔW = (lora_alpha / r)·B·A (lora_alpha / √r with use_rslora; a module's own alpha from
`alpha_pattern`, its rank from `rank_pattern`), and a LoRA bias (`lora_bias`) times the same factor. So
`lora_alpha` × s, and every `alpha_pattern` entry × s, is ΔW × s exactly, and the A/B weights are used as they
are: hard-linked (copied across file systems). The result is a plain peft adapter directory; the other files
(tokenizer, prompt template, generation config) are copied, and where the base is is recorded afresh
(`record_base_model`: `base_model.json` holds a path relative to the adapter, which a copy would get wrong).

Trainable token rows (peft's `trainable_token_indices`, a recipe's `lora.trainable_tokens`) are not a delta: peft
saves the trained rows themselves and copies them over the base's. They are interpolated toward the base's rows,
base + s·(trained − base), read from the base's safetensors files (those rows only).

Refused, each with one error: DoRA and every other peft LoRA variant (DoRA rescales W + ΔW to a trained
magnitude, so a smaller ΔW does not move the merged weight toward W); inits that rewrite the base weights
(PiSSA, OLoRA, CorDA, LoftQ: such an adapter is relative to a residual, not to the base); `modules_to_save`
(whole trained modules, which tunelab never writes); adapters other than LoRA.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.model.base_record import ADAPTER_CONFIG, BASE_RECORD, record_base_model, resolve_base_model
from tunelab.model.weight_files import ADAPTER_WEIGHTS, weight_files
from tunelab.records import building_dir, read_json_object, write_json

_TOKEN_ROWS = ".token_adapter.trainable_tokens_delta"  # peft's name for saved trainable rows, after the module's
_PEFT_PREFIX = "base_model.model."
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")  # pissa also as pissa_niter_N


def check_scale(scale: float, field: str = "scale") -> float:
    """`scale` as a float when 0 < scale ≤ 1: 0 is the base itself (evaluated as the base), above 1 extrapolates
    past what was trained, and neither is an interpolation."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or math.isnan(scale) \
            or not 0 < scale <= 1:
        raise TunelabError(f"an adapter scale is a number above 0 and at most 1 (the fine-tuned model), got {scale}",
                           field=field)
    return float(scale)


def asked_scale(scale: float | str | None, frontier: dict | None, file: str | Path | None = None) -> float | None:
    """The adapter scale an export or a hand-in is asked to merge at: None (as trained), a number in (0, 1], or
    `chosen`: the scale the run's adapter-scale frontier chose (`frontier`: metrics.json's `scale_frontier`,
    written by `tunelab.pipeline.scale_frontier`). The one place `chosen` is looked up; every error names the
    `scale` argument (and `file`, the run, when given)."""
    if scale is None:
        return None
    if scale == "chosen":
        if not frontier:
            raise TunelabError("'chosen' is the scale a run's adapter-scale frontier chose, and this run has none (set "
                               "eval.scales in its recipe), or give a number in (0, 1]", file=file, field="scale")
        if frontier.get("chosen") is None:
            raise TunelabError("retention fails at every scale of the run's frontier, so none was chosen: give a "
                               "number in (0, 1]", file=file, field="scale")
        return check_scale(frontier["chosen"])
    try:
        return check_scale(float(scale))
    except (TypeError, ValueError) as err:
        raise TunelabError(f"an adapter scale is a number in (0, 1] or 'chosen', got {scale!r}",
                           field="scale") from err


def scaled_adapter(adapter_dir: str | Path, scale: float, out_dir: str | Path) -> Path:
    """Write into the new directory `out_dir` the adapter of `adapter_dir` with its update times `scale` (module
    docstring): built beside it and renamed into place. Returns `out_dir`."""
    scale = check_scale(scale)
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    config = read_json_object(config_path)
    refuse_unscalable(config, config_path)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TunelabError("output directory exists and is not empty", file=out_dir)
    base = resolve_base_model(adapter_dir)
    config["lora_alpha"] = config["lora_alpha"] * scale
    config["alpha_pattern"] = {k: v * scale for k, v in (config.get("alpha_pattern") or {}).items()}
    with building_dir(out_dir) as tmp:
        for item in adapter_dir.iterdir():
            if item.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        write_json(tmp / ADAPTER_CONFIG, config)
        if config.get("trainable_token_indices"):
            _write_interpolated_rows(adapter_dir / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS, config, base, scale)
        else:
            _link_or_copy(adapter_dir / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        record_base_model(tmp, base)  # the staging directory is out_dir's sibling: the relative path holds
    return out_dir


def refuse_unscalable(config: dict, config_path: Path) -> None:
    """One error when scaling `lora_alpha` would not scale this adapter's update toward the base (module
    docstring); the variants are peft's own list (`is_lora_variant` fields), so a new one is refused too."""
    import dataclasses

    from peft import LoraConfig
    if config.get("peft_type") != "LORA":
        raise TunelabError(f"only a LoRA adapter's update can be scaled; this is a {config.get('peft_type')} "
                           "adapter", file=config_path, field="peft_type")
    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    variants = [name for name, f in fields.items() if f.metadata.get("is_lora_variant") and config.get(name)]
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init in fields["init_lora_weights"].metadata.get("lora_variants", []):
        variants.append(f"init_lora_weights: {init}")  # an init that picks a variant (peft 0.21: mica)
    if variants:
        raise TunelabError(f"a {variants[0]} adapter cannot be scaled toward its base: its merged weight is not "
                           "W + ΔW (DoRA renormalises it to a trained magnitude); scale a plain LoRA adapter",
                           file=config_path, field=variants[0].split(":")[0])
    if isinstance(init, str) and init.startswith(_BASE_REWRITING_INITS):
        raise TunelabError(f"an adapter initialised with {init} is relative to a rewritten base (a residual), not "
                           "to the base itself: scaling it does not move toward the base", file=config_path,
                           field="init_lora_weights")
    if config.get("modules_to_save"):
        raise TunelabError(f"modules_to_save ({', '.join(config['modules_to_save'])}) are whole trained modules, "
                           "not a LoRA update: this adapter cannot be scaled", file=config_path,
                           field="modules_to_save")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise TunelabError("no numeric lora_alpha", file=config_path, field="lora_alpha")


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link (no second copy on disk; nothing ever writes into adapter weights), else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _write_interpolated_rows(src: Path, dest: Path, config: dict, base: str, scale: float) -> None:
    """The adapter's weights with every trainable-token block moved to base + scale·(trained − base)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    for key, trained in tensors.items():
        if not key.endswith(_TOKEN_ROWS):
            continue
        module = key.removeprefix(_PEFT_PREFIX).removesuffix(_TOKEN_ROWS)
        rows = _token_indices(config["trainable_token_indices"], module, src)
        if len(rows) != trained.shape[0]:
            raise TunelabError(f"{key} holds {trained.shape[0]} rows, trainable_token_indices names {len(rows)}",
                               file=src)
        original = _base_rows(base, f"{module}.weight", rows).to(torch.float32)
        tensors[key] = (original + scale * (trained.to(torch.float32) - original)).to(trained.dtype)
    save_file(tensors, str(dest), metadata=metadata)


def _token_indices(indices: list | dict, module: str, weights: Path) -> list[int]:
    """The token ids whose rows the adapter trains in `module`: peft's `trainable_token_indices` is a list (the
    input embeddings) or {module name or its last part(s): ids}."""
    if isinstance(indices, list):
        return indices
    for name, ids in indices.items():
        if module == name or module.endswith("." + name):
            return ids
    raise TunelabError(f"trainable token rows of {module}, which trainable_token_indices does not name",
                       file=weights)


def _base_rows(base: str, key: str, rows: list[int]):
    """Rows `rows` of the base's tensor `key`, read from its safetensors files (a hub base from the local
    cache, where loading it would look too) without reading the rest of the tensor."""
    import torch
    from safetensors import safe_open
    base_dir = Path(base)
    if not base_dir.is_dir():
        from huggingface_hub import snapshot_download
        base_dir = Path(snapshot_download(base, allow_patterns=["*.safetensors", "*.safetensors.index.json"]))
    for path in weight_files(base_dir):
        with safe_open(str(path), framework="pt") as f:
            if key in f.keys():
                part = f.get_slice(key)
                return torch.cat([part[i:i + 1] for i in rows])
    raise TunelabError(f"the base has no {key} to interpolate the adapter's trainable token rows toward",
                       file=base_dir)
