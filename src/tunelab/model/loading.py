"""Load models and tokenizers: a local HF directory or hub id (real `from_pretrained`), a preset built
from its config with random init (from scratch), or a saved LoRA adapter on top of its base."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def quiet_transformers() -> None:
    """Silence transformers' per-file progress bars and info logs; tunelab shows its own progress.

    Also ignore one FutureWarning that every LoRA run printed: peft's `PeftModel.__init__` (0.21) reads
    the `is_gradient_checkpointing` alias that transformers 5 deprecates. tunelab never reads it, so the
    user can do nothing about it; the filter matches that message only.
    """
    import warnings

    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _torch_dtype(name: str):
    import torch
    return "auto" if name == "auto" else getattr(torch, _DTYPES[name])


def looks_like_hub_id(path: str) -> bool:
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def check_model_path(path: str, field: str = "model.path") -> None:
    """A local path must exist; a hub id (org/name) is left to `from_pretrained`."""
    if not Path(path).exists() and not looks_like_hub_id(path):
        raise TunelabError("model path not found", file=path, field=field)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise TunelabError(f"cannot load a tokenizer ({str(e).splitlines()[0]})", file=path) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(path: str, dtype: str = "float32"):
    """`AutoModelForCausalLM.from_pretrained` with errors turned into one clear message."""
    from transformers import AutoModelForCausalLM
    check_model_path(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise TunelabError(f"cannot load a model ({str(e).splitlines()[0]})", file=path) from None


def build_from_scratch(preset: str, vocab_size: int, overrides: dict, tokenizer):
    """Random-init a preset architecture sized to the tokenizer."""
    from transformers import AutoModelForCausalLM

    from tunelab.model.presets import preset_config
    config = preset_config(preset, vocab_size=vocab_size, **overrides)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    return AutoModelForCausalLM.from_config(config)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_for_inference(path: str, dtype: str = "float32", merge: bool = False):
    """Load (model, tokenizer) from a full HF directory, a hub id, or a LoRA adapter directory.

    An adapter directory is loaded onto its base (`base_model_name_or_path` in adapter_config.json) with
    peft; `merge=True` merges the adapter into the weights for faster generation.
    """
    path = str(path)
    check_model_path(path, field="model")
    if is_adapter_dir(path):
        from peft import PeftModel
        from tunelab.data.records import read_json_object
        cfg = read_json_object(Path(path, "adapter_config.json"))
        base_path = cfg.get("base_model_name_or_path")
        if not base_path:
            raise TunelabError("adapter has no base_model_name_or_path", file=Path(path, "adapter_config.json"),
                               field="base_model_name_or_path")
        base = load_pretrained(base_path, dtype)
        model = PeftModel.from_pretrained(base, path)
        if merge:
            model = model.merge_and_unload()
    else:
        model = load_pretrained(path, dtype)
    model.eval()
    return model, load_tokenizer(path)
