"""A merged model as one GGUF file for llama.cpp, Ollama and LM Studio, written with the `gguf` package (the llama.cpp
project's own Python writer, tensor-name map and quantisers).

What llama.cpp reads is what its convert_hf_to_gguf.py writes (conversion/llama.py, qwen.py, gemma.py in
llama.cpp, read for the layout, not copied): `general.architecture` and the `{arch}.*` hyper-parameters, the
tensors under `gguf.TensorNameMap`'s names, and the tokenizer (`gguf_vocab`). Per architecture:

- `llama` (Llama-2/3, the tiny base, the MiniGPT presets): llama.cpp rotates (q, k) as interleaved pairs where
  Hugging Face rotates halves, so q_proj and k_proj rows are permuted per head (convert's `LlamaModel.permute`).
- `qwen2`: q/k/v biases, halves rotation (no permutation).
- `gemma`, `gemma2`: RMSNorm scales by (1 + w), so 1 is added to every norm weight; embeddings are tied (no output
  tensor); Gemma-2 also carries its soft-caps and sliding window, and llama.cpp fixes its layer pattern (sliding
  on even layers) and query scale (1/sqrt(head_dim) below 46 layers), so a config with others is refused.

Tensor types follow convert's rules: 1-D tensors and norms stay F32, the rest is the chosen type, and a Q8_0
tensor whose rows are not a multiple of 32 falls back to F16. The types convert writes itself (f32, f16, bf16,
q8_0) are written here; any other llama.cpp type (q4_k_m, q5_k_m, q6_k, q4_0, ...) is made by llama.cpp's own
quantiser from the f16 file: through llama-cpp-python's `llama_model_quantize` when it is installed, else the f16
file is kept and the exact `llama-quantize` command is returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

# the types the gguf package writes as convert_hf_to_gguf.py does (its --outtype)
WRITTEN = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's quantiser's types (llama-quantize's names), made from the f16 file
QUANTISED = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
             "q5_k_m", "q6_k")
QUANTS = WRITTEN + QUANTISED

# Hugging Face model_type -> GGUF architecture
ARCHS = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma", "gemma2": "gemma2"}


@dataclass(frozen=True)
class GGUFExport:
    path: Path                     # the .gguf file written (the f16 one when `quantize_command` is set)
    quant: str                     # the type asked for
    tokenizer_pre: str             # tokenizer.ggml.pre
    tokenizer_exact: bool          # whether llama.cpp's pre-tokenizer splits exactly as the tokenizer does
    quantize_command: str | None   # the llama.cpp command still to run, when llama-cpp-python is not installed


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:                        # per layer type (Gemma-style configs)
        params = params["full_attention"]
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise TunelabError(f"rope_type '{rope_type}' is not written by tunelab's GGUF export (only the default "
                           "rotary embedding); llama.cpp's convert_hf_to_gguf.py handles scaled RoPE",
                           field="config.rope_parameters")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def check_architecture(config) -> str:
    """The GGUF architecture of a transformers config, or one line saying why GGUF export cannot hold it."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHS.get(model_type)
    if arch is None:
        raise TunelabError(f"GGUF export writes {', '.join(ARCHS)} models; this one is '{model_type}'",
                           field="config.model_type")
    act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    want = ("silu",) if arch in ("llama", "qwen2") else ("gelu_pytorch_tanh", "gelu")
    if act not in want:
        raise TunelabError(f"llama.cpp's {arch} uses {want[0]}, this model {act}", field="config.hidden_act")
    if arch == "qwen2" and getattr(config, "use_sliding_window", False):
        raise TunelabError("llama.cpp's qwen2 has no sliding window", field="config.use_sliding_window")
    if arch == "gemma2":
        n = config.num_hidden_layers
        pattern = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        if list(getattr(config, "layer_types", None) or pattern) != pattern:
            raise TunelabError("llama.cpp's gemma2 slides on even layers only; this model's layer_types differ",
                               field="config.layer_types")
        scalar = getattr(config, "query_pre_attn_scalar", config.head_dim)
        expected = config.hidden_size / config.num_attention_heads if n == 46 else config.head_dim
        if scalar != expected:
            raise TunelabError(f"llama.cpp's gemma2 scales queries by 1/sqrt({expected:g}); this model by "
                               f"1/sqrt({scalar})", field="config.query_pre_attn_scalar")
    _rope_theta(config)
    return arch


def _permute(w, n_head: int):
    """Hugging Face's rotate-halves rows of q_proj / k_proj as llama.cpp's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: str):
    """(GGUF name, float32 numpy array) of every weight, in llama.cpp's layout."""
    import gguf
    import torch
    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False)) or arch in ("gemma", "gemma2")
    for name, tensor in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise TunelabError(f"no GGUF name for the {arch} tensor '{name}'", field="model")
        data = tensor.detach().to(torch.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, n_head)
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, n_kv)
        if arch in ("gemma", "gemma2") and name.endswith("norm.weight"):
            data = data + 1
        yield new, data.contiguous().numpy()


def _tensor_type(name: str, data, quant: str):
    import gguf
    Q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or name.endswith("_norm.weight") or quant == "f32":
        return Q.F32
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[quant]


def _file_type(quant: str):
    import gguf
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def write_gguf(model, tokenizer, path: Path, quant: str = "f16", name: str = "model"):
    """Write `model` (a loaded, merged causal LM) and `tokenizer` as one GGUF file of type `quant` (one of WRITTEN).
    Returns the vocabulary written (`gguf_vocab.GGUFVocab`)."""
    try:
        import gguf
    except ImportError as err:
        raise TunelabError("GGUF export needs the gguf package: pip install 'tunelab[gguf]' (or gguf)",
                           field="--format") from err

    from tunelab.convert.gguf_vocab import gguf_vocab, write_vocab
    config = model.config
    arch = check_architecture(config)
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(_file_type(quant))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_vocab_size(len(vocab.tokens))
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads or arch in ("gemma", "gemma2"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "gemma2":
        if config.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        if config.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    write_vocab(writer, vocab)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, data in _tensors(model, arch):
        qtype = _tensor_type(tensor_name, data, quant)
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError as e:
            log.debug("%s: %s, written as F16", tensor_name, e)
            qtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(tensor_name, packed, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab


def quantize_command(source: Path, target: Path, quant: str) -> str:
    """The llama.cpp command that makes `target` of type `quant` from the f16 `source`."""
    return f"llama-quantize {source} {target} {quant.upper()}"


def llama_quantize(source: Path, target: Path, quant: str) -> bool:
    """Quantise with llama.cpp's own quantiser (llama_model_quantize, through llama-cpp-python); False when
    llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return False
    # llama.cpp's per-tensor progress goes through llama-cpp-python's logger: shown with --verbose only
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 0
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if rc != 0:
        raise TunelabError(f"llama.cpp's quantiser failed ({rc}) making {quant.upper()}", file=source)
    return True


def export_gguf(model, tokenizer, out_dir: Path, name: str, quant: str = "f16", system: str = "") -> GGUFExport:
    """`out_dir/NAME-QUANT.gguf` and an Ollama `Modelfile` beside it (out_dir exists and is empty); `system`: the
    system prompt the model was trained with, the Modelfile's SYSTEM."""
    from tunelab.convert.modelfile import ollama_modelfile
    if quant not in QUANTS:
        raise TunelabError(f"unknown GGUF type '{quant}' ({', '.join(QUANTS)})", field="quant")
    written = quant if quant in WRITTEN else "f16"
    path = out_dir / f"{name}-{written.upper()}.gguf"
    vocab = write_gguf(model, tokenizer, path, written, name)
    command = None
    if written != quant:
        target = out_dir / f"{name}-{quant.upper()}.gguf"
        if llama_quantize(path, target, quant):
            path.unlink()
            path = target
        else:
            command = quantize_command(path, target, quant)
    modelfile = ollama_modelfile(path.name, tokenizer, vocab.add_bos, system)
    if command:
        target = f"{name}-{quant.upper()}.gguf"
        modelfile = (f"# once `{quantize_command(Path(path.name), Path(target), quant)}` has run in this directory: "
                     f"FROM ./{target}\n" + modelfile)
    (out_dir / "Modelfile").write_text(modelfile, encoding="utf-8")
    return GGUFExport(path, quant, vocab.pre, vocab.exact, command)

