"""Sampling defaults that travel with a model: the `generation_config.json` beside its weights.

Every checkpoint and export states the decoding tunelab's evaluation scored it with — greedy (`do_sample:
false`), the evaluation's answer length (`max_new_tokens`), every stop id of
`tunelab.decoding.stops.stop_token_ids` (`eos_token_id`) and the pad id — so plain `transformers`
`model.generate()` answers and stops as `tunelab eval` did, and `tunelab serve` / `tunelab ui` use it for the
parameters a request or a slider leaves out (`sampling_defaults`).

A model's own generation config (a hub model's, as transformers loaded it) is read as `model.generate()` reads
it; one transformers derived from `config.json` (`_from_model_config`) states no decoding, and such a model keeps
the endpoint's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GENERATION_CONFIG_FILE = "generation_config.json"

# what a checkpoint keeps from its base's generation config: settings that do not change which tokens come out
# (a hub base's bos id, Gemma-2's cache); its sampling, penalties, beams, lengths and stop strings are decoding
# choices the evaluation did not make (and transformers refuses to save temperature & co. beside do_sample=False)
_KEPT = ("bos_token_id", "decoder_start_token_id", "cache_implementation", "cache_config", "use_cache")


def eval_max_new_tokens(eval_config) -> int:
    """The longest answer a recipe's evaluation lets a model write: `eval.max_new_tokens`, or a task's
    `max_new_tokens` setting (the continuation task has one; its entry's options, else `eval.options`) when
    that is longer."""
    shared = eval_config.options.get("max_new_tokens")
    own = [t.options.get("max_new_tokens", shared) for t in eval_config.tasks]
    return max([eval_config.max_new_tokens,
                *(n for n in own if isinstance(n, int) and not isinstance(n, bool) and n > 0)])


def evaluated_generation_config(model, tokenizer, max_new_tokens: int):
    """The model's generation config with tunelab's evaluation decoding in place of its own: greedy,
    `max_new_tokens`, eos = the full stop set, pad id (a `transformers.GenerationConfig`, validated strictly)."""
    from transformers import GenerationConfig

    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    own = getattr(model, "generation_config", None)
    kept = {} if own is None else {k: v for k, v in own.to_diff_dict().items() if k in _KEPT}
    stops = stop_token_ids(model, tokenizer)
    config = GenerationConfig(**kept, do_sample=False, max_new_tokens=int(max_new_tokens),
                              eos_token_id=sorted(stops), pad_token_id=pad_token_id(tokenizer, stops))
    config.validate(strict=True)
    return config


def with_stop_ids(generation_config, model, tokenizer):
    """A copy of a model's own generation config whose eos_token_id lists every stop id, with the pad id where it
    has none; nothing else changes (for a model whose evaluation is not known: an export of a bare adapter)."""
    import copy

    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    config = copy.deepcopy(generation_config)
    eos = config.eos_token_id
    stops = stop_token_ids(model, tokenizer) | set([eos] if isinstance(eos, int) else eos or ())
    config.eos_token_id = sorted(stops)
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id(tokenizer, stops)
    return config


def write_generation_config(directory: str | Path, model, tokenizer, max_new_tokens: int) -> Path:
    """Write `evaluated_generation_config` into `directory` (over the one `save_pretrained` wrote)."""
    path = Path(directory) / GENERATION_CONFIG_FILE
    evaluated_generation_config(model, tokenizer, max_new_tokens).to_json_file(path, use_diff=True)
    return path


def load_generation_config(directory: str | Path):
    """The GenerationConfig saved in a local model or adapter directory, or None. (transformers loads a model
    directory's own; an adapter directory's would otherwise be replaced by its base's.)"""
    from transformers import GenerationConfig
    if not (Path(directory) / GENERATION_CONFIG_FILE).is_file():
        return None
    return GenerationConfig.from_pretrained(str(directory))


@dataclass(frozen=True)
class SamplingDefaults:
    """What a model's generation config says about decoding; None: it says nothing (the endpoint's default)."""

    temperature: float | None = None    # 0: greedy
    top_p: float | None = None
    top_k: int | None = None            # 0: no top-k filter
    max_tokens: int | None = None


def sampling_defaults(generation_config) -> SamplingDefaults:
    """Read a GenerationConfig as `model.generate()` does: without do_sample it is greedy; with it, its temperature,
    top_p and top_k (transformers' 1.0, 1.0 and 50 where it gives none). A missing config, or one derived from
    config.json, says nothing."""
    if generation_config is None or getattr(generation_config, "_from_model_config", False):
        return SamplingDefaults()
    n = generation_config.max_new_tokens
    max_tokens = n if isinstance(n, int) and n > 0 else None
    if not generation_config.do_sample:
        return SamplingDefaults(temperature=0.0, max_tokens=max_tokens)
    t, p, k = generation_config.temperature, generation_config.top_p, generation_config.top_k
    return SamplingDefaults(temperature=float(t) if t is not None else 1.0, top_p=float(p) if p is not None else 1.0,
                            top_k=int(k) if k is not None else 50, max_tokens=max_tokens)
