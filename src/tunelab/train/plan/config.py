"""The model's config without its weights, offline: a preset (with the vocabulary its tokenizer will give it), a
local directory, run directory, adapter or MindFormers YAML, the Hugging Face cache, or a built-in config for the
hub ids the shipped recipes name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from tunelab.recipe import Recipe

# hub ids the shipped recipes name -> the preset with the same config.json (no network, no weights)
BUILTIN_HUB_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-8b",
    "meta-llama/Llama-3.1-8B": "llama3-8b",         # rope scaling and context differ: the same bytes a step
    "meta-llama/Llama-3.1-8B-Instruct": "llama3-8b",
    "google/gemma-2b": "gemma-2b",
}


def model_config(recipe: Recipe) -> tuple[PretrainedConfig, str]:
    """(config, where it came from) for the recipe's model, offline: a preset (vocabulary from the tokenizer it
    will have), a local directory / run directory / adapter / MindFormers YAML, the HF cache, or a built-in
    config for the hub ids the shipped recipes name."""
    from tunelab.model.presets import preset_config
    m = recipe.model
    if m.path is None:
        vocab, said = _scratch_vocab(recipe)
        overrides = dict(m.overrides)
        if vocab is not None and "vocab_size" not in overrides:
            overrides["vocab_size"] = vocab
        config = preset_config(m.preset, **overrides)
        return config, f"preset {m.preset}, vocabulary {config.vocab_size:,} ({said})"
    if m.path.endswith(".ckpt"):
        from transformers import AutoConfig

        from tunelab.model.mindformers_convert import hf_config_from_mindformers_yaml
        cfg, _ = hf_config_from_mindformers_yaml(m.mindformers_config)
        cfg = dict(cfg)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg), f"{m.mindformers_config} (MindFormers YAML)"
    return _path_config(m.path, "model.path")


def _path_config(path: str, field: str) -> tuple[PretrainedConfig, str]:
    from tunelab.model.presets import load_config, preset_config
    from tunelab.runs import is_run_dir, pick_checkpoint
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir() and is_run_dir(p):
            p = pick_checkpoint(p)
        if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
            from tunelab.records import read_json_object
            base = read_json_object(p / "adapter_config.json").get("base_model_name_or_path")
            if not base:
                raise TunelabError("adapter has no base_model_name_or_path", file=p / "adapter_config.json")
            config, said = _path_config(base, field)
            return config, f"{path} (adapter) on {said}"
        return load_config(str(p)), str(p / "config.json" if p.is_dir() else p)
    hub_id = path.removeprefix("hf:")
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(hub_id, "config.json")
    except ValueError:  # not a valid repo id (HFValidationError): reported below as not found
        cached = None
    if isinstance(cached, str):
        return load_config(cached), f"{hub_id} (config.json from the Hugging Face cache)"
    if hub_id in BUILTIN_HUB_CONFIGS:
        preset = BUILTIN_HUB_CONFIGS[hub_id]
        return preset_config(preset), f"{hub_id} (built-in config: preset {preset})"
    raise TunelabError(f"no config.json for '{path}': not a local directory (a run this recipe starts from that has "
                       "not run yet?), not in the Hugging Face cache, and not a hub id tunelab knows offline. The plan "
                       f"needs the model's config, not its weights: a directory holding config.json, the config in "
                       f"the Hugging Face cache (`hf download {hub_id} config.json`), or the architecture by preset "
                       "(model.path: null, model.preset: NAME)", field=field)


def _scratch_vocab(recipe: Recipe) -> tuple[int | None, str]:
    """The vocabulary a from-scratch model gets (the loop sizes it to its tokenizer), and where that comes from."""
    m = recipe.model
    if not m.from_scratch:
        return None, "the preset's"
    tokenizer = m.tokenizer
    corpus = recipe.data.train[0] if recipe.data.corpus else None
    if tokenizer is None and corpus is not None:
        build = corpus.build
        if build is not None and not isinstance(build.tokenizer, str):
            if not (Path(build.tokenizer.out) / "tokenizer.json").is_file():
                return build.tokenizer.vocab_size, "the corpus build's tokenizer.vocab_size"
            tokenizer = build.tokenizer.out
        elif build is not None:
            tokenizer = build.tokenizer
        else:
            tokenizer = str(Path(corpus.corpus) / "tokenizer")
    if tokenizer is not None and (Path(tokenizer) / "tokenizer.json").is_file():
        data = json.loads((Path(tokenizer) / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = len(data.get("model", {}).get("vocab", {})) + sum(
            1 for t in data.get("added_tokens", []) if t.get("content") not in data.get("model", {}).get("vocab", {}))
        return vocab, f"tokenizer {tokenizer}"
    if tokenizer is None and corpus is None:
        return m.tokenizer_vocab_size, "model.tokenizer_vocab_size: the BPE the run trains"
    return None, f"the preset's: tokenizer {tokenizer} not found"
