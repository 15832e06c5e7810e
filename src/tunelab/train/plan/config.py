"""The model's config without its weights, offline: a preset (with the vocabulary its tokenizer will give it), a
local directory, run directory, adapter, GGUF file (its metadata) or MindFormers YAML, the Hugging Face cache, or a
built-in config for the hub ids the shipped recipes name. A course's later stage is planned before its earlier one
has run: a `model.path` run directory that does not exist yet is the model of the recipe beside it that produces
it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from tunelab.recipe import Recipe

log = logging.getLogger(__name__)

# hub ids the shipped recipes name -> the preset with the same config.json (no network, no weights)
BUILTIN_HUB_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-8b",
    "meta-llama/Llama-3.1-8B": "llama3-8b",         # rope scaling and context differ: the same bytes a step
    "meta-llama/Llama-3.1-8B-Instruct": "llama3-8b",
    "google/gemma-2b": "gemma-2b",
}


def model_config(recipe: Recipe, recipe_file: str | Path | None = None) -> tuple[PretrainedConfig, str]:
    """(config, where it came from) for the recipe's model, offline: a preset (vocabulary from the tokenizer it
    will have), a local directory / run directory / adapter / MindFormers YAML, the HF cache, or a built-in
    config for the hub ids the shipped recipes name. With `recipe_file` (where `recipe` was read from), a
    `model.path` found nowhere is the run directory a recipe in the same folder produces, planned from that
    recipe's model."""
    return _model_config(recipe, None if recipe_file is None else Path(recipe_file), frozenset())


def _model_config(recipe: Recipe, recipe_file: Path | None, seen: frozenset) -> tuple[PretrainedConfig, str]:
    from tunelab.convert.gguf_import import gguf_config, is_gguf
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

        from tunelab.convert.mindformers import hf_config_from_mindformers_yaml
        cfg, _ = hf_config_from_mindformers_yaml(m.mindformers_config)
        cfg = dict(cfg)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg), f"{m.mindformers_config} (MindFormers YAML)"
    if is_gguf(m.path):
        return gguf_config(m.path, "model.path")
    found = _path_config(m.path, "model.path")
    if found is not None:
        return found
    if recipe_file is None or m.path.startswith("hf:"):
        raise _not_found(m.path, "model.path")
    return _producer_config(m.path, recipe_file, seen | {recipe_file.resolve()})


def _path_config(path: str, field: str) -> tuple[PretrainedConfig, str] | None:
    """The config at `path` (a directory, run, adapter, or a hub id in the cache or built in); None: none there."""
    from tunelab.model.presets import load_config, preset_config
    p = Path(path).expanduser()
    if p.exists():
        from tunelab.convert.resolve_model import resolve_model   # the model training would load, as it finds it
        resolved = resolve_model(path, field=field)
        if resolved.adapter is not None:
            found = _path_config(resolved.base, field)
            if found is None:
                raise _not_found(resolved.base, field)
            config, said = found
            return config, f"{path} (adapter) on {said}"
        p = Path(resolved.base)
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
    return None


def _not_found(path: str, field: str) -> TunelabError:
    """No config anywhere, and no recipe file to look for the one that would make it."""
    hub_id = path.removeprefix("hf:")
    return TunelabError(
        f"no config.json for '{path}': not a local directory (a run this recipe starts from that has not run yet?), "
        "not in the Hugging Face cache, and not a hub id tunelab knows offline. The plan needs the model's config, not "
        "its weights: a directory holding config.json, the config in the Hugging Face cache (`hf download "
        f"{hub_id} config.json`), or the architecture by preset (model.path: null, model.preset: NAME)", field=field)


def _producer_config(path: str, recipe_file: Path, seen: frozenset) -> tuple[PretrainedConfig, str]:
    """The config of the model that the recipe beside `recipe_file` producing `path` will save there (`seen`: the
    recipes already on the way, so that a chain of stages cannot loop)."""
    producer = producing_recipe(path, recipe_file, seen)
    if producer is None:
        raise _no_producer(path, recipe_file)
    recipe, file = producer
    log.info(f"{path} does not exist yet: planning from {file}, which produces it")
    config, said = _model_config(recipe, file, seen | {file.resolve()})
    return config, f"{path}, not run yet: as {file} makes it, {said}"


def producing_recipe(path: str, recipe_file: str | Path, seen: frozenset = frozenset()) -> tuple[Recipe, Path] | None:
    """(the recipe in `recipe_file`'s folder whose run directory, `output_dir/name`, is `path`; its file), or None.
    Files that are not recipes are passed over, and so are `recipe_file` and the files in `seen`."""
    from tunelab.recipe import load_recipe
    recipe_file = Path(recipe_file)
    target = Path(path).expanduser().resolve()
    skip = {recipe_file.resolve(), *seen}
    for file in sorted([*recipe_file.parent.glob("*.yaml"), *recipe_file.parent.glob("*.yml")]):
        if file.resolve() in skip:
            continue
        try:
            recipe = load_recipe(file, check_data=False)
        except TunelabError:
            continue  # a YAML file that is not a (valid) recipe produces nothing
        if Path(recipe.output_dir).expanduser().resolve() / recipe.name == target:
            return recipe, file
    return None


def _no_producer(path: str, recipe_file: Path) -> TunelabError:
    """The plan cannot know the architecture of a model nothing has made yet: say how to give it one."""
    from tunelab.model.presets import PRESETS
    from tunelab.recipe import line_of_key
    try:
        line = line_of_key(recipe_file.read_text(encoding="utf-8"), ("model", "path"))
    except (OSError, UnicodeDecodeError):
        line = None
    return TunelabError(
        f"no config.json for '{path}': not a local directory, no recipe in {recipe_file.parent} produces it (none "
        "has it as its run directory, output_dir/name), and not a hub id in the Hugging Face cache or known offline. "
        "The plan needs the model's architecture, not its weights: give it by preset with --set model.path=null "
        f"--set model.preset=NAME ({', '.join(PRESETS)}) and its vocabulary with --set model.overrides.vocab_size=N",
        file=recipe_file, line=line, field="model.path")


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
