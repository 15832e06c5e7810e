"""Check safetensors weight files before anything loads them, so a damaged or mismatched one is one line.

A copy cut short (an interrupted `scp`, a full disk) or an adapter moved onto another base otherwise surfaces
deep inside safetensors or peft ("incomplete metadata, file not fully covered", "Error(s) in loading
state_dict ... size mismatch") as a traceback that names neither the file nor the cause. Reading a file's
header costs a few kilobytes, so every load checks first.

The format (https://github.com/huggingface/safetensors, "Format"): 8 bytes, the header's length N as a
little-endian u64; N bytes of JSON mapping each tensor name to {dtype, shape, data_offsets: [begin, end]}
(offsets into the data after the header; "__metadata__" is the one other key); then the data. A whole file
is therefore exactly 8 + N + the largest `end` bytes long, which is what safetensors itself insists on.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tunelab.errors import TunelabError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000  # safetensors refuses a longer header; a longer "length" means the file is not one


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files a load of `model_dir` reads: an adapter's weights, a model's single file, or the
    shards its index names (a shard the index names but the directory lacks is an error here, as it would be
    halfway through the load)."""
    d = Path(model_dir)
    single = [d / name for name in (ADAPTER_WEIGHTS, MODEL_WEIGHTS) if (d / name).is_file()]
    if single or not (d / MODEL_INDEX).is_file():
        return single
    from tunelab.records import read_json_object
    weight_map = read_json_object(d / MODEL_INDEX).get("weight_map")
    if not isinstance(weight_map, dict):
        raise TunelabError("has no weight_map (not a safetensors index)", file=d / MODEL_INDEX)
    shards = [d / name for name in sorted(set(weight_map.values()))]
    for shard in shards:
        if not shard.is_file():
            raise TunelabError(f"missing: {MODEL_INDEX} lists it (a copy that left a shard out?)", file=shard)
    return shards


def check_weight_files(model_dir: str | Path) -> None:
    """Raise one TunelabError for the first weight file of `model_dir` that is cut short or not safetensors."""
    for path in weight_files(model_dir):
        safetensors_header(path)


def safetensors_header(path: Path) -> dict:
    """The tensors a safetensors file holds ({name: {dtype, shape, data_offsets}}), after checking that its
    length is the one its header implies."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TunelabError(f"truncated: {size:,} bytes, not even the 8-byte header length "
                               "(a copy cut short or a full disk?)", file=path)
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise TunelabError(f"not a safetensors file{_lfs_hint(head)}", file=path)
        text = f.read(n)
    if len(text) < n:
        if text[:1] != b"{":
            raise TunelabError(f"not a safetensors file{_lfs_hint(head)}", file=path)
        raise TunelabError(f"truncated: {size:,} bytes, cut inside its {8 + n:,}-byte header "
                           "(a copy cut short or a full disk?)", file=path)
    try:
        header = json.loads(text)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise TunelabError("not a safetensors file (its header is not the JSON safetensors writes)",
                           file=path) from err
    expected = 8 + n + end
    if size < expected:
        raise TunelabError(f"truncated: {size:,} of {expected:,} bytes (a copy cut short or a full disk?)",
                           file=path)
    if size > expected:
        raise TunelabError(f"damaged: {size:,} bytes, {size - expected:,} more than its header describes "
                           "(written over, or appended to?)", file=path)
    return tensors


def _lfs_hint(head: bytes) -> str:
    """A Git LFS pointer committed in place of the weights is the usual non-safetensors file."""
    return " (a Git LFS pointer: fetch the weights with `git lfs pull`)" if head == b"version " else ""


def check_adapter_fits(adapter_dir: str | Path, base_model, base_name: str) -> None:
    """Raise one TunelabError when the adapter's LoRA matrices do not fit the base model's layers (an adapter
    trained on another model), before peft copies them in and fails with one "size mismatch" per tensor.
    Each `<module>.lora_A.weight` is (rank, in_features) and `<module>.lora_B.weight` (out_features, rank);
    a module the base lacks is an adapter for a deeper or different model (peft would silently skip it)."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        return
    problems = []
    for key, info in safetensors_header(path).items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            continue
        try:
            layer = base_model.get_submodule(module)
        except AttributeError:
            problems.append(f"{module} is in the adapter but not in the base")
            continue
        inputs = part == "A.weight"
        size = (info.get("shape") or [None])[-1 if inputs else 0]
        base_size = getattr(layer, "in_features" if inputs else "out_features", None)
        if base_size is not None and size != base_size:
            problems.append(f"{module} {'takes' if inputs else 'gives'} {size} {'inputs' if inputs else 'outputs'} "
                            f"in the adapter, {base_size} in the base")
    if problems:
        hidden = getattr(base_model.config, "hidden_size", None)
        notes = ([f"base hidden_size {hidden}"] if hidden is not None else []) + \
            ([f"{len(problems) - 1} more tensors like it"] if len(problems) > 1 else [])
        raise TunelabError(f"the adapter does not fit its base {base_name}: {problems[0]}"
                           f"{' (' + ', '.join(notes) + ')' if notes else ''}: was it trained on another model?",
                           file=path)
