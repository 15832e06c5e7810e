"""`tunelab convert`: Hugging Face model directories <-> MindFormers checkpoints (`.ckpt`), for the
architectures the MindFormers competitions hand out: Llama-3 / Llama-2 and InternLM (v1).

The parameter names are MindFormers' own, as its conversion scripts define them (mindspore-lab/mindformers):
`mindformers/models/llama/convert_weight.py` and `convert_reversed.py` (`name_replace`, at fd4deebc, 2025-07)
and `research/internlm/convert_weight.py` / `convert_reversed.py` (tag v1.3.2, 024279c2; InternLM was removed
from MindFormers in 1.5). Both map the same way:

    model.embed_tokens.weight              <-> model.tok_embeddings.embedding_weight
    model.layers.N.self_attn.{q,k,v,o}_proj <-> model.layers.N.attention.w{q,k,v,o}    (.weight, InternLM .bias)
    model.layers.N.mlp.gate_proj / down_proj / up_proj <-> model.layers.N.feed_forward.w1 / w2 / w3
    model.layers.N.input_layernorm          <-> model.layers.N.attention_norm
    model.layers.N.post_attention_layernorm <-> model.layers.N.ffn_norm
    model.norm.weight                       <-> model.norm_out.weight
    lm_head.weight                          <-> lm_head.weight

Weights keep their [out, in] layout (MindFormers' `Linear` stores the weight as torch does; its scripts copy
values unchanged; HF's q/k rows are already in the rotary layout MindFormers uses, the Meta-format permute of
`convert_meta_torch_ckpt` is not needed from HF). With `qkv_concat` MindFormers fuses q/k/v into
`attention.w_qkv` and gate/up into `feed_forward.w_gate_hidden` in its Megatron order (`convert_utils.py`:
`qkv_concat_hf2mg`, `ffn_concat_hf2mg`): per key/value head group the group's query rows, then its key rows,
then its value rows; gate and up rows interleaved. Reading splits those exactly; writing fuses on request.
Dtypes are kept unless asked (`pt2ms`/`ms2pt` do the same: bfloat16 stays bfloat16).

HF InternLM (remote code `modeling_internlm.py`) is Llama with `bias=config.bias` on q/k/v/o, and its state dict
also holds each layer's `self_attn.rotary_emb.inv_freq` buffer, recomputed from the config: it is left out of
the `.ckpt` and counted in the summary. Without HF's remote code, an InternLM `.ckpt` converts to a plain
`LlamaForCausalLM` with `attention_bias: true`, the same computation.

Every name is checked against the architecture's parameter list (shapes too): an unknown or missing name is
an error that lists them. Tensors stream one at a time (safetensors shards or the .ckpt read lazily), so a
conversion holds at most one tensor of the input and one output shard.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.convert.mindspore_ckpt import iter_ckpt, write_ckpt
from tunelab.records import read_json_object, read_text

log = logging.getLogger(__name__)

LAYER_NAMES = [  # (HF module, MindFormers module) inside model.layers.N
    ("self_attn.q_proj", "attention.wq"), ("self_attn.k_proj", "attention.wk"),
    ("self_attn.v_proj", "attention.wv"), ("self_attn.o_proj", "attention.wo"),
    ("mlp.gate_proj", "feed_forward.w1"), ("mlp.down_proj", "feed_forward.w2"), ("mlp.up_proj", "feed_forward.w3"),
    ("input_layernorm", "attention_norm"), ("post_attention_layernorm", "ffn_norm")]
TOP_NAMES = [("model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"),
             ("model.norm.weight", "model.norm_out.weight"), ("lm_head.weight", "lm_head.weight")]
HF_BUFFERS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # InternLM remote code
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_HF2MS = dict(LAYER_NAMES)
_MS2HF = {m: h for h, m in LAYER_NAMES}
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")


def _renamed(name: str, top: dict[str, str], layer: dict[str, str]) -> str | None:
    """`name` in the other framework's naming: a whole-model parameter by `top`, a layer's by `layer`."""
    if name in top:
        return top[name]
    m = _LAYER.fullmatch(name)
    if m and m.group(2) in layer:
        return f"model.layers.{m.group(1)}.{layer[m.group(2)]}.{m.group(3)}"
    return None


def hf_to_ms_name(name: str) -> str | None:
    """MindFormers' name for an HF parameter name, None when it has none."""
    return _renamed(name, dict(TOP_NAMES), _HF2MS)


def ms_to_hf_name(name: str) -> str | None:
    """The HF name for a MindFormers parameter name, None when it has none."""
    return _renamed(name, {ms: hf for hf, ms in TOP_NAMES}, _MS2HF)


# --- the architecture: what parameters a model of this config has ------------------------------------------

@dataclass(frozen=True)
class Arch:
    """The shapes that decide a Llama/InternLM parameter list."""

    kind: str  # "llama" or "internlm"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    attention_bias: bool
    tied: bool

    def hf_params(self) -> dict[str, tuple[int, ...]]:
        """Every HF parameter name with its shape (what `LlamaForCausalLM.state_dict()` holds)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(self.layers):
            p = f"model.layers.{n}."
            shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                      "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
                      "mlp.down_proj": (h, i), "input_layernorm": (h,), "post_attention_layernorm": (h,)}
            for mod, shape in shapes.items():
                out[p + mod + ".weight"] = shape
                if self.attention_bias and mod.startswith("self_attn."):
                    out[p + mod + ".bias"] = (shape[0],)
        out["model.norm.weight"] = (h,)
        out["lm_head.weight"] = (self.vocab, h)
        return out


def arch_from_hf_config(cfg: dict, where: str | Path) -> Arch:
    kind = cfg.get("model_type")
    if kind not in ("llama", "internlm"):
        raise TunelabError(f"model_type '{kind}' has no MindFormers mapping in tunelab (llama, internlm)",
                           file=where, field="model_type")
    try:
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        return Arch(kind=kind, hidden=hidden, layers=cfg["num_hidden_layers"], heads=heads,
                    kv_heads=cfg.get("num_key_value_heads") or heads,
                    head_dim=cfg.get("head_dim") or hidden // heads, intermediate=cfg["intermediate_size"],
                    vocab=cfg["vocab_size"],
                    attention_bias=bool(cfg.get("attention_bias", False) if kind == "llama" else cfg.get("bias", True)),
                    tied=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as e:
        raise TunelabError(f"config has no {e.args[0]}", file=where, field=e.args[0]) from e


def _ffn_size(mc: dict) -> int:
    """MindFormers' FFN width (`convert_weight.py: convert_qkv_concat_weight`, from LlamaFeedForward)."""
    if mc.get("intermediate_size"):
        return int(mc["intermediate_size"])
    ffn = 4 * mc["hidden_size"]
    if mc.get("ffn_dim_multiplier") is not None:
        ffn = int((mc["ffn_dim_multiplier"] + 0.01) * ffn)
    ffn = int(2 * ffn / 3)
    multiple_of = mc.get("multiple_of", 256)
    return multiple_of * ((ffn + multiple_of - 1) // multiple_of)


def hf_config_from_mindformers_yaml(path: str | Path) -> tuple[dict, bool]:
    """An HF LlamaConfig (as a dict) from a MindFormers YAML's `model.model_config`, and its `qkv_concat`.
    InternLMConfig becomes Llama with `attention_bias` (q/k/v/o biases), as InternLM's HF code computes."""
    import yaml
    path = Path(path)
    try:
        doc = yaml.safe_load(read_text(path))
        mc = dict(doc["model"]["model_config"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise TunelabError(f"not a MindFormers YAML with model.model_config ({type(e).__name__}: {e})",
                           file=path) from e
    kind = str(mc.get("type", "LlamaConfig"))
    if kind not in ("LlamaConfig", "InternLMConfig"):
        raise TunelabError(f"model_config type {kind}: tunelab converts LlamaConfig and InternLMConfig", file=path,
                           field="model.model_config.type")
    try:
        heads = int(mc["num_heads"])
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
               "hidden_size": int(mc["hidden_size"]), "num_hidden_layers": int(mc["num_layers"]),
               "num_attention_heads": heads, "num_key_value_heads": int(mc.get("n_kv_heads") or heads),
               "intermediate_size": _ffn_size(mc), "vocab_size": int(mc["vocab_size"]),
               "rms_norm_eps": float(mc.get("rms_norm_eps", 1e-5)),
               "rope_theta": float(mc.get("theta", 10000.0)),
               "max_position_embeddings": int(mc.get("max_position_embedding") or mc.get("seq_length") or 2048),
               "attention_bias": bool(mc.get("has_bias", kind == "InternLMConfig")),
               "hidden_act": "silu", "tie_word_embeddings": False,
               "bos_token_id": mc.get("bos_token_id", 1), "eos_token_id": mc.get("eos_token_id", 2),
               "pad_token_id": mc.get("pad_token_id")}
    except (KeyError, TypeError, ValueError) as e:
        raise TunelabError(f"model_config: {e}", file=path, field="model.model_config") from e
    return cfg, bool(mc.get("qkv_concat", False))


def mindformers_model_config(cfg: dict, seq_length: int | None = None) -> dict:
    """The `model.model_config` of a MindFormers YAML for an HF Llama/InternLM config (the reverse of
    `hf_config_from_mindformers_yaml`), for a hand-in's YAML fragment."""
    arch = arch_from_hf_config(cfg, "config.json")
    out = {"type": "InternLMConfig" if arch.kind == "internlm" else "LlamaConfig",
           "seq_length": seq_length or cfg.get("max_position_embeddings", 2048), "hidden_size": arch.hidden,
           "num_layers": arch.layers, "num_heads": arch.heads, "vocab_size": arch.vocab,
           "intermediate_size": arch.intermediate, "rms_norm_eps": cfg.get("rms_norm_eps", 1e-6),
           "bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id"),
           "pad_token_id": cfg.get("pad_token_id")}
    if arch.kv_heads != arch.heads:
        out["n_kv_heads"] = arch.kv_heads
    if arch.attention_bias:
        out["has_bias"] = True
    if cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta"):
        out["theta"] = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    return out


# --- fused layouts (MindFormers qkv_concat) ----------------------------------------------------------------

def fuse_qkv(q, k, v, arch: Arch):
    """`qkv_concat_hf2mg`: per key/value group, the group's query rows, its key rows, its value rows."""
    import torch
    tail = q.shape[1:]
    parts = [t.reshape(arch.kv_heads, -1, *tail) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *tail)


def split_qkv(w, arch: Arch):
    g, d = arch.kv_heads, arch.head_dim
    rep = arch.heads // arch.kv_heads
    tail = w.shape[1:]
    grouped = w.reshape(g, (rep + 2) * d, *tail)
    q, k, v = grouped.split([rep * d, d, d], dim=1)
    return tuple(t.reshape(-1, *tail).contiguous() for t in (q, k, v))


def fuse_gate_up(gate, up):
    """`ffn_concat_hf2mg`: gate and up rows interleaved."""
    import torch
    return torch.stack([gate, up], dim=1).reshape(-1, gate.shape[1])


def split_gate_up(w):
    pair = w.reshape(-1, 2, w.shape[1])
    return pair[:, 0].contiguous(), pair[:, 1].contiguous()


# --- reading an HF directory one tensor at a time ----------------------------------------------------------

def _hf_weight_files(model_dir: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (model_dir / index).exists():
            weight_map = read_json_object(model_dir / index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise TunelabError("expected 'weight_map': {tensor name: file name}", file=model_dir / index,
                                   field="weight_map")
            files = weight_map.values()
            return [model_dir / f for f in dict.fromkeys(files)]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / single).exists():
            return [model_dir / single]
    raise TunelabError(f"no weights here (expected one of {', '.join(HF_WEIGHTS)})", file=model_dir)


def hf_tensor_names(model_dir: Path) -> list[str]:
    names = []
    for f in _hf_weight_files(model_dir):
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(f, framework="pt") as sf:
                names += list(sf.keys())
        else:
            import torch
            names += list(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return names


def iter_hf_tensors(model_dir: Path) -> Iterator[tuple[str, object]]:
    """(name, tensor) over the shards; .bin shards are memory-mapped, safetensors read tensor by tensor."""
    import torch
    for f in _hf_weight_files(model_dir):
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(f, framework="pt") as sf:
                for name in sf.keys():
                    yield name, sf.get_tensor(name)
        else:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            for name in list(state):
                yield name, state.pop(name)


def _check_names(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where,
                 side: str) -> None:
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    wrong = sorted(f"{n} {list(found[n])} (expected {list(expected[n])})" for n in set(found) & set(expected)
                   if tuple(found[n]) != tuple(expected[n]))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown {side} parameter(s): {', '.join(unknown[:20])}"
                        + (" …" if len(unknown) > 20 else ""))
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:20])}" + (" …" if len(missing) > 20 else ""))
    if wrong:
        problems.append(f"{len(wrong)} with another shape: {', '.join(wrong[:10])}")
    if problems:
        raise TunelabError("; ".join(problems), file=where)


def _cast(t, dtype: str | None):
    import torch
    return t if dtype in (None, "keep") else t.to(getattr(torch, dtype))


def _progress(total: int, desc: str, unit: str = "tensor"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=None, leave=False)


# --- HF -> MindSpore ---------------------------------------------------------------------------------------

def hf_to_mindspore(model_dir: str | Path, out: str | Path, dtype: str | None = None,
                    qkv_concat: bool = False) -> dict:
    """Write an HF Llama/InternLM directory as one MindFormers .ckpt; returns a summary (counts, skipped)."""
    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").exists():
        raise TunelabError("not a Hugging Face model directory (no config.json)", file=model_dir)
    cfg = read_json_object(model_dir / "config.json")
    arch = arch_from_hf_config(cfg, model_dir / "config.json")
    if out.exists():
        raise TunelabError("output exists; tunelab does not overwrite a checkpoint", file=out)
    expected = arch.hf_params()
    if arch.tied:
        expected.pop("lm_head.weight")
    names = hf_tensor_names(model_dir)
    skipped = [n for n in names if HF_BUFFERS.fullmatch(n)]
    # shapes come from the headers (safetensors) or the memory-mapped .bin: nothing is read yet
    found = {n: tuple(s) for n, s in _hf_shapes(model_dir).items() if not HF_BUFFERS.fullmatch(n)}
    if arch.tied:
        found.pop("lm_head.weight", None)  # a tied head saved anyway is the embedding
    _check_names(found, expected, model_dir, "Hugging Face")

    bar = _progress(len(found), f"HF -> {out.name}")

    def tensors():
        pending: dict[str, object] = {}
        for name, t in iter_hf_tensors(model_dir):
            if HF_BUFFERS.fullmatch(name) or name not in found:
                continue
            bar.update(1)
            t = _cast(t, dtype)
            ms = hf_to_ms_name(name)
            if name == "model.embed_tokens.weight" and arch.tied:
                yield "lm_head.weight", t  # MindFormers' Llama always has its own head
            if qkv_concat and _fusable(ms):
                pending[ms] = t
                yield from _emit_fused(pending, ms, arch)
                continue
            yield ms, t
        if pending:  # cannot happen once the names were checked
            raise TunelabError(f"incomplete fused groups: {sorted(pending)}", file=model_dir)

    try:
        count = write_ckpt(out, tensors())
    finally:
        bar.close()
    return {"parameters": count, "skipped_buffers": len(skipped), "arch": arch.kind, "qkv_concat": qkv_concat}


def _hf_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in _hf_weight_files(model_dir):
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(f, framework="pt") as sf:
                for name in sf.keys():
                    shapes[name] = tuple(sf.get_slice(name).get_shape())
        else:
            import torch
            for name, t in torch.load(f, map_location="cpu", weights_only=True, mmap=True).items():
                shapes[name] = tuple(t.shape)
    return shapes


_FUSED = re.compile(r"(model\.layers\.\d+)\.(attention\.w[qkv]|feed_forward\.w[13])\.(weight|bias)")


def _fusable(ms_name: str) -> bool:
    return bool(_FUSED.fullmatch(ms_name))


def _emit_fused(pending: dict, ms_name: str, arch: Arch):
    prefix, _, kind = _FUSED.fullmatch(ms_name).groups()
    if "attention" in ms_name:
        keys = [f"{prefix}.attention.w{x}.{kind}" for x in "qkv"]
        if all(k in pending for k in keys):
            q, k, v = (pending.pop(x) for x in keys)
            yield f"{prefix}.attention.w_qkv.{kind}", fuse_qkv(q, k, v, arch)
    else:
        keys = [f"{prefix}.feed_forward.w1.{kind}", f"{prefix}.feed_forward.w3.{kind}"]
        if all(k in pending for k in keys):
            gate, up = (pending.pop(x) for x in keys)
            yield f"{prefix}.feed_forward.w_gate_hidden.{kind}", fuse_gate_up(gate, up)


# --- MindSpore -> HF ---------------------------------------------------------------------------------------

def _hf_config_from(config: str | Path) -> tuple[dict, Path]:
    """An HF config from an HF directory/config.json or a MindFormers YAML."""
    p = Path(config)
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        raise TunelabError("config not found (an HF config.json or directory, or a MindFormers YAML)", file=p)
    if p.suffix in (".yaml", ".yml"):
        return hf_config_from_mindformers_yaml(p)[0], p
    return read_json_object(p), p


def mindspore_to_hf(ckpt: str | Path, out: str | Path, config: str | Path, dtype: str | None = None,
                    tokenizer: str | Path | None = None, max_shard_bytes: int = 5 * 1024 ** 3) -> dict:
    """Write a MindFormers .ckpt as an HF directory (config.json, safetensors shards + index, the tokenizer
    files of `tokenizer` if given). Fused w_qkv / w_gate_hidden are split; names and shapes are checked
    against the config before anything is written."""
    import torch
    from safetensors.torch import save_file
    ckpt, out = Path(ckpt), Path(out)
    cfg, cfg_path = _hf_config_from(config)
    arch = arch_from_hf_config(cfg, cfg_path)
    if out.exists() and any(out.iterdir()):
        raise TunelabError("output directory exists and is not empty", file=out)
    expected = arch.hf_params()

    # pass 1: names and shapes only (the .ckpt is read once more to convert; nothing is kept)
    found: dict[str, tuple[int, ...]] = {}
    unknown = []
    for t in iter_ckpt(ckpt):
        for hf_name, shape in _ms_shapes(t.name, t.shape, arch):
            if hf_name is None:
                unknown.append(t.name)
            else:
                found[hf_name] = shape
    if arch.tied:  # MindFormers' Llama has its own head: keep it, untied, rather than drop it unchecked
        cfg = {**cfg, "tie_word_embeddings": False}
        arch = arch_from_hf_config(cfg, cfg_path)
    if unknown:
        raise TunelabError(f"{len(unknown)} parameter(s) with no HF name: {', '.join(sorted(unknown)[:20])}"
                           " (training state such as optimizer moments is not a model weight: save the model "
                           "parameters only)", file=ckpt)
    _check_names(found, expected, ckpt, "MindSpore")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shard: dict[str, torch.Tensor] = {}
    shard_files: list[tuple[str, list[str]]] = []
    size = 0

    def flush():
        nonlocal size
        if shard:
            name = f"part-{len(shard_files):05d}.safetensors"
            save_file(shard, tmp / name, metadata={"format": "pt"})
            shard_files.append((name, list(shard)))
            shard.clear()
            size = 0

    total = ckpt.stat().st_size
    bar = _progress(total, f"{ckpt.name} -> HF", unit="B")
    last = [0]

    def progress(pos):
        bar.update(pos - last[0])
        last[0] = pos
    try:
        for t in iter_ckpt(ckpt, progress):
            for hf_name, tensor in _ms_tensors(t, arch):
                tensor = _cast(tensor, dtype)
                if size and size + tensor.nbytes > max_shard_bytes:
                    flush()
                shard[hf_name] = tensor
                size += tensor.nbytes
        flush()
    finally:
        bar.close()
    _name_shards(tmp, shard_files)
    cfg = dict(cfg)
    if dtype not in (None, "keep"):
        cfg["dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if tokenizer:
        copy_tokenizer_files(Path(tokenizer), tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {"parameters": len(found), "shards": len(shard_files), "arch": arch.kind}


def converted_cache_root() -> Path:
    """Where converted base checkpoints are kept: `converted/` in tunelab's cache (`records.cache_root`)."""
    from tunelab.records import cache_root
    return cache_root() / "converted"


def hf_dir_for_ckpt(ckpt: str | Path, config: str | Path, tokenizer: str | Path | None = None) -> Path:
    """A MindFormers .ckpt (the organisers' base model) as an HF directory to train from: converted once with
    `mindspore_to_hf`, tokenizer files included, and kept in the cache under a key of the checkpoint's and the
    config's path, size and modification time (and the tokenizer's path), so every later run, eval or serve
    of the same files reuses it. Written atomically: a killed conversion leaves nothing that looks done."""
    out = ckpt_converted_dir(ckpt, config, tokenizer)
    if not (out / "config.json").is_file():
        shutil.rmtree(out, ignore_errors=True)    # a half-written one from a killed conversion
        log.info(f"converting {ckpt} (MindFormers) to a Hugging Face directory, once: {out}")
        mindspore_to_hf(ckpt, out, config, tokenizer=tokenizer)
    return out


def ckpt_converted_dir(ckpt: str | Path, config: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Where `hf_dir_for_ckpt` keeps the HF directory of these files, converted yet or not: the same path in
    every process that names the same files (what the other ranks of a torchrun launch wait for)."""
    import hashlib
    ckpt, config = Path(ckpt), Path(config)
    for path, field in ((ckpt, "model.path"), (config, "model.mindformers_config")):
        if not path.is_file():
            raise TunelabError("not found", file=path, field=field)
    parts = []
    for path in (ckpt, config):
        st = path.stat()
        parts.append(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    parts.append(str(Path(tokenizer).resolve()) if tokenizer else "-")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return converted_cache_root() / f"{ckpt.stem}-{key}"


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer (and generation config) files an HF directory holds; none found is an error."""
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not copied:
        raise TunelabError(f"no tokenizer files here (looked for {', '.join(TOKENIZER_FILES)})", file=src)
    for f in copied:
        shutil.copy(src / f, dst / f)
    return copied


def _name_shards(tmp: Path, shard_files: list[tuple[str, list[str]]]) -> None:
    """HF's names: model.safetensors alone, else model-0000i-of-0000n.safetensors with an index."""
    n = len(shard_files)
    if n == 1:
        (tmp / shard_files[0][0]).rename(tmp / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (name, keys) in enumerate(shard_files, 1):
        final = f"model-{i:05d}-of-{n:05d}.safetensors"
        (tmp / name).rename(tmp / final)
        total += (tmp / final).stat().st_size
        weight_map.update({k: final for k in keys})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _ms_shapes(name: str, shape: tuple[int, ...], arch: Arch) -> list[tuple[str | None, tuple[int, ...]]]:
    m = re.fullmatch(r"(model\.layers\.\d+)\.(attention\.w_qkv|feed_forward\.w_gate_hidden)\.(weight|bias)", name)
    if not m:
        return [(ms_to_hf_name(name), shape)]
    prefix, mod, kind = m.groups()
    tail = shape[1:]
    if mod == "attention.w_qkv":
        q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
        if shape[0] != q + 2 * kv:
            return [(f"{prefix}.self_attn.q_proj.{kind}", shape)]  # reported as a wrong shape
        return [(f"{prefix}.self_attn.{x}_proj.{kind}", (n, *tail)) for x, n in (("q", q), ("k", kv), ("v", kv))]
    half = shape[0] // 2
    return [(f"{prefix}.mlp.{x}_proj.{kind}", (half, *tail)) for x in ("gate", "up")]


def _ms_tensors(t, arch: Arch) -> list[tuple[str, object]]:
    tensor = t.to_torch()
    m = re.fullmatch(r"(model\.layers\.\d+)\.(attention\.w_qkv|feed_forward\.w_gate_hidden)\.(weight|bias)", t.name)
    if not m:
        return [(ms_to_hf_name(t.name), tensor)]
    prefix, mod, kind = m.groups()
    if mod == "attention.w_qkv":
        q, k, v = split_qkv(tensor, arch)
        return [(f"{prefix}.self_attn.q_proj.{kind}", q), (f"{prefix}.self_attn.k_proj.{kind}", k),
                (f"{prefix}.self_attn.v_proj.{kind}", v)]
    gate, up = split_gate_up(tensor)
    return [(f"{prefix}.mlp.gate_proj.{kind}", gate), (f"{prefix}.mlp.up_proj.{kind}", up)]


# --- both directions, by the input's name -------------------------------------------------------------------

def convert_checkpoint(source: str | Path, output: str | Path, config: str | Path | None = None,
                       tokenizer: str | Path | None = None, dtype: str = "keep", qkv_concat: bool = False,
                       max_shard_bytes: int = 5 * 1024 ** 3) -> dict:
    """`tunelab convert`: a MindFormers .ckpt into a new HF directory (`config`: the MindFormers YAML or an HF
    config, since a .ckpt holds no architecture; `tokenizer`: an HF directory whose tokenizer files are copied),
    or an HF directory into a new .ckpt. Returns the conversion's summary, with "to": "hf" or "mindspore"."""
    src, out = Path(source), Path(output)
    cast = None if dtype == "keep" else dtype
    if src.suffix == ".ckpt":
        if not config:
            raise TunelabError("a .ckpt holds no architecture: give its config (the MindFormers YAML, or an HF "
                               "config.json or directory)", field="config")
        return {**mindspore_to_hf(src, out, config, cast, tokenizer, max_shard_bytes), "to": "hf"}
    if config or tokenizer:
        raise TunelabError("a config and a tokenizer are for .ckpt -> HF; an HF directory has its own",
                           field="config" if config else "tokenizer")
    if out.suffix != ".ckpt":
        raise TunelabError("the MindSpore output must be a .ckpt file", file=out)
    return {**hf_to_mindspore(src, out, cast, qkv_concat), "to": "mindspore"}
