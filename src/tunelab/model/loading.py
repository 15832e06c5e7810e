"""Load models and tokenizers: a local HF directory or hub id (real `from_pretrained`), a preset built
from its config with random init (from scratch), or a saved LoRA adapter on top of its base.

Every failure a user can cause is one TunelabError naming the file: weight files are checked before they are
read (`weight_files`), an adapter against its base before peft copies it in, an adapter's base is found where
its run recorded it (`base_record`), and a hub id that cannot be fetched (offline, not cached) fails at once.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.model.base_record import hub_unreachable, looks_like_hub_id, resolve_base_model
from tunelab.model.weight_files import ADAPTER_WEIGHTS, check_adapter_fits, check_weight_files

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def quiet_transformers() -> None:
    """Silence transformers' per-file progress bars and info logs; tunelab shows its own progress.

    Also ignore one FutureWarning that every LoRA run printed: peft's `PeftModel.__init__` (0.21) reads
    the `is_gradient_checkpointing` alias that transformers 5 deprecates. tunelab never reads it, so the
    user can do nothing about it; the filter matches that message only.

    And drop one bitsandbytes warning that importing peft printed on CPUs with AVX-512 BF16 (0.50: "Failed to
    load CPU gemm_4bit_forward from kernels-community …"): an optional kernel for 4-bit layers, logged to
    stderr ahead of every verb's own output and of its one-line error, even when nothing is quantised.
    """
    import logging as std_logging
    import warnings

    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    std_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_4bit_kernel_warning)  # added once


def _not_the_4bit_kernel_warning(record) -> bool:
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def _torch_dtype(name: str):
    import torch
    return "auto" if name == "auto" else getattr(torch, _DTYPES[name])


def check_model_path(path: str, field: str = "model.path") -> None:
    """A local path must exist; a hub id (org/name) is left to `from_pretrained`."""
    if not Path(path).exists() and not looks_like_hub_id(path):
        raise TunelabError("model path not found", file=path, field=field)


def _check_hub(repo_id: str, what: str, fix: str, **where) -> None:
    """One error at once when hub id `repo_id` can be neither fetched nor found in the cache; `what` names it
    in the message, `fix` is the local alternative, `where` the error's file/field."""
    reason = hub_unreachable(repo_id)
    if reason:
        raise TunelabError(f"{what} is not in the local Hugging Face cache and {reason}: download it where there "
                           f"is network (`hf download {repo_id}`, then copy the cache over), or {fix}", **where)


def _load_failure(e: Exception) -> bool:
    """Whether an exception from `from_pretrained` is a file that does not load (damaged, missing, of another
    shape) rather than a bug: OSError, ValueError, safetensors' error, a state-dict size mismatch."""
    from safetensors import SafetensorError
    if isinstance(e, RuntimeError):
        return any(s in str(e) for s in ("size mismatch", "Error(s) in loading state_dict", "mismatched_sizes"))
    return isinstance(e, (OSError, ValueError, SafetensorError))


def _first_line(e: Exception) -> str:
    """The first line of `e` that says something: not a heading ending in ':' ("Error(s) in loading
    state_dict for PeftModelForCausalLM:" is followed by the line that names the tensor)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(e).__name__)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    check_model_path(path)
    if looks_like_hub_id(path):
        _check_hub(path, f"tokenizer {path}", "give a local copy")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise TunelabError(f"cannot load a tokenizer ({str(e).splitlines()[0]})", file=path) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(path: str, dtype: str = "float32", device=None):
    """`AutoModelForCausalLM.from_pretrained` with errors turned into one clear message: a damaged weight file
    is named before loading starts; a hub id that cannot be fetched fails at once."""
    from transformers import AutoModelForCausalLM
    check_model_path(path)
    if looks_like_hub_id(path):
        _check_hub(path, f"model {path}", "give a local copy")
    elif Path(path).is_dir():
        check_weight_files(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype), **_placed(device))
    except Exception as e:
        if not _load_failure(e):
            raise
        raise TunelabError(f"cannot load a model ({_first_line(e)})", file=path) from e


def build_from_scratch(preset: str, vocab_size: int, overrides: dict, tokenizer):
    """Random-init a preset architecture sized to the tokenizer."""
    from transformers import AutoModelForCausalLM

    from tunelab.model.presets import preset_config
    config = preset_config(preset, vocab_size=vocab_size, **overrides)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    return AutoModelForCausalLM.from_config(config)


def adapter_base(path: str, base: str | None = None) -> str:
    """The base an adapter directory was trained on (`base` when the caller found it already, e.g.
    `tunelab.convert.resolve_model`), once its weights file is whole; a base that is no local directory must be
    a hub id this machine can load."""
    check_weight_files(path)
    base_path = base or resolve_base_model(path)
    if not Path(base_path).exists():
        _check_hub(base_path, f"the adapter's base {base_path} is no directory here, and as a hub id it",
                   "point base_model_name_or_path at a local copy", file=Path(path, "adapter_config.json"),
                   field="base_model_name_or_path")
    return base_path


def attach_adapter(base, path: str, base_path: str, onto=None, name: str = "default", trainable: bool = False):
    """The adapter (LoRA, IA³, VeRA, LN tuning, prompt tuning) at `path` on `base` (checked to fit it first),
    unmerged: a new PeftModel, or with `onto` (a PeftModel already wrapping `base`) loaded beside its adapters as
    `name`, for `set_adapter`. `trainable`: its weights take gradients (a run that continues the adapter)."""
    from peft import PeftModel

    from tunelab.model.lora import quiet_peft
    check_adapter_fits(path, base, base_path)
    where = str(next(base.parameters()).device)  # the base's own device (peft's default is cuda:0 on any rank)
    try:
        with quiet_peft():
            if onto is not None:
                onto.load_adapter(path, adapter_name=name, torch_device=where, is_trainable=trainable)
                return onto
            return PeftModel.from_pretrained(base, path, adapter_name=name, torch_device=where,
                                             is_trainable=trainable)
    except Exception as e:
        if not _load_failure(e):
            raise
        weights = Path(path, ADAPTER_WEIGHTS)
        raise TunelabError(f"the adapter does not load onto its base {base_path} ({_first_line(e)})",
                           file=weights if weights.exists() else path) from e


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def mergeable(model) -> bool:
    """Whether the peft model's adapter changes weights that `merge_and_unload` can fold into the base (prompt
    tuning's virtual tokens change none)."""
    return not getattr(model.active_peft_config, "is_prompt_learning", False)


def check_mergeable(path: str | Path, purpose: str) -> None:
    """Refuse, naming the adapter kind, to merge an adapter directory whose adapter changes no weight: `purpose`
    says what the merged weights were for."""
    from tunelab.model.lora import PEFT_TYPES, UNMERGEABLE
    from tunelab.records import read_json_object
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return
    if read_json_object(config).get("peft_type") in {PEFT_TYPES[kind] for kind in UNMERGEABLE}:
        raise TunelabError(f"{purpose} takes merged weights, and a prompt-tuning adapter has none to merge: its "
                           "virtual tokens go before every input, which a plain model file cannot hold. Serve or "
                           "evaluate the run itself (tunelab serve, tunelab eval), or train a weight adapter (lora, "
                           "ia3, vera, ln_tuning)", file=config, field="peft_type")


def _placed(device) -> dict:
    """`from_pretrained`'s arguments that load the weights straight onto `device` (a GPU: no copy of the whole
    model in host RAM first, which is 16 GB per process for an 8B model); nothing for the CPU."""
    return {} if device is None or str(device) == "cpu" else {"device_map": {"": str(device)}}


def load_for_inference(path: str, dtype: str = "float32", merge: bool = False, device=None, base: str | None = None):
    """Load (model, tokenizer) from a full HF directory, a hub id, or a LoRA adapter directory.

    An adapter directory is loaded onto its base (`base` when given — `tunelab.convert.resolve_model` found it —,
    else where `base_record.resolve_base_model` finds it) with peft, once its weights file is whole and its
    shapes fit the base; `merge=True` merges the adapter into the weights for faster generation — where it has
    weights to merge: a prompt-tuning adapter stays a peft model, whose virtual tokens the decoding core runs
    (`model.virtual_tokens`).
    """
    path = str(path)
    check_model_path(path, field="model")
    if is_adapter_dir(path):
        base_path = adapter_base(path, base)
        model = attach_adapter(load_pretrained(base_path, dtype, device), path, base_path)
        if merge and mergeable(model):
            model = model.merge_and_unload()
    else:
        model = load_pretrained(path, dtype, device)
    model.eval()
    return model, load_tokenizer(path)
