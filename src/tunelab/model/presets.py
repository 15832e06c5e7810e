"""Architecture presets as plain config dicts, so parameter counts and from-scratch models need no hub access.

The published presets reproduce the parameter totals the competition quotes; torch and transformers are imported
inside the functions so fast verbs can import this module cheaply.

The minigpt-* presets are Llama-style decoders, not Hugging Face's GPT2 classes, on purpose.

- RoPE instead of learned positions: nothing caps the context at the trained length's table, and packed
  rows restart positions per block, which relative rotations handle naturally.
- RMSNorm (pre-norm) and SwiGLU: the block modern small models (Llama, Qwen, MiniMind) use, and what the
  students' next step (SFT) and the fine-tuning half of tunelab expect. The SwiGLU width is ~8/3·d, so the
  MLP has GPT-2's 8·d² parameters and minigpt-124m matches GPT-2 small's shape (d 768, 12 layers, 12 heads).
- Tied input/output embeddings, as GPT-2: with a small model the vocabulary matrix is a large share of it.
- Above all, the same code paths as every other model here: the labelled-only loss (`train/methods/sft_loss.py`), the
  CPU packed-row attention, LoRA targets (q/k/v/o, gate/up/down), `tunelab serve`/`eval`/`export` and the
  KV-cache engine all know `llama`; a GPT2 model would need its own path through each.
vocab_size is replaced by the tokenizer's at build time; no biases, no dropout.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

_TINY_BASE = {"model_type": "llama", "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
              "vocab_size": 2000}

_MINIGPT_BASE = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "vocab_size": 2000}

PRESETS: dict[str, dict[str, Any]] = {
    # Meta-Llama-3-8B config.json: 8,030,261,248 parameters.
    "llama3-8b": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False,
    },
    # InternLM-7B as a Llama: the original has q/k/v/o biases, but the competition's 7,321,423,872 counts none
    # (attention_bias=True would add 32 * 4 * 4096 = 524,288).
    "internlm-7b": {
        "model_type": "llama", "vocab_size": 103168, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
        "attention_bias": False,
    },
    # google/gemma-2b config.json (its legacy hidden_act "gelu" means the tanh approximation): 2,506,172,416.
    "gemma-2b": {
        "model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
        "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": True,
    },
    # CPU from-scratch sizes; vocab_size is replaced by the tokenizer's at build time.
    "tiny": {**_TINY_BASE, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
             "num_attention_heads": 4},
    "tiny-6l": {**_TINY_BASE, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 6,
                "num_attention_heads": 4},
    "micro": {**_TINY_BASE, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
              "num_attention_heads": 2},
    # MiniGPT pretraining sizes (why Llama-style: the module docstring); tied embeddings; counts measured
    # with build_on_meta (tests/test_pretrain.py checks them).
    # GPT-2 small's shape: 123,551,232 parameters at GPT-2's 50,257 vocabulary (84,953,856 without the
    # embedding, + 768 per vocabulary entry); GPT-2 small itself has 124,439,808 (learned positions, biases).
    "minigpt-124m": {**_MINIGPT_BASE, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 1024},
    # laptop: 25,305,600 without the embedding, + 512 per vocabulary entry (28,582,400 at a 6,400 vocabulary)
    "minigpt-25m": {**_MINIGPT_BASE, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
                    "num_attention_heads": 8, "max_position_embeddings": 1024},
    # tests: 100,672 without the embedding, + 64 per vocabulary entry (228,672 at 2,000)
    "minigpt-tiny": {**_MINIGPT_BASE, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 512},
}

# owner/name with no leading '.', '/' or '~': what a hub id looks like, as opposed to a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def preset_config(name: str, **overrides: Any) -> PretrainedConfig:
    """The transformers config of a preset, with `overrides` (e.g. vocab_size from the tokenizer) applied."""
    if name not in PRESETS:
        raise TunelabError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    kwargs = copy.deepcopy(PRESETS[name])
    model_type = kwargs.pop("model_type")
    kwargs.update(overrides)
    from transformers import AutoConfig
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (TypeError, ValueError) as e:
        raise TunelabError(f"invalid config override for preset '{name}': {_first_line(e)}") from e


def load_config(model: str) -> PretrainedConfig:
    """Resolve a preset name, a local HF directory, a config.json path, or (last) a hub id to a config."""
    if model in PRESETS:
        return preset_config(model)
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise TunelabError("no config.json in this directory", file=model)
    if path.exists():
        return _auto_config(str(path), model)
    if _HUB_ID.fullmatch(model) and not model.endswith(".json"):
        try:
            return _auto_config(model, model)
        except TunelabError as e:
            raise TunelabError(f"not a preset or an existing path; as a hub id: {e.message}", file=model) from e
    if any(sep in model for sep in ("/", "\\")) or model.endswith(".json") or model.startswith((".", "~")):
        raise TunelabError("no such file or directory", file=model)
    raise TunelabError(f"unknown model '{model}': not a preset ({', '.join(PRESETS)}), "
                       "a local HF directory or a config.json")


def _auto_config(source: str, shown: str) -> PretrainedConfig:
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a bad config; all user errors
        raise TunelabError(f"cannot load the model config: {_first_line(e)}", file=shown) from e


def _first_line(e: BaseException) -> str:
    """The CLI prints errors as one line; transformers messages are often paragraphs."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def build_on_meta(config: PretrainedConfig) -> torch.nn.Module:
    """Instantiate the causal LM with meta tensors: shapes and parameter counts without memory (seconds for 8B)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
