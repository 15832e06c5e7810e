"""A quantised base for QLoRA: the frozen weights held in 4-bit NF4 or 8-bit int8 by bitsandbytes, the LoRA
adapters trained on top in higher precision.

Why: Llama-3-8B in bf16 is 16 GB of weights before a single activation or optimizer state; in NF4 it is ~5.7 GB,
which is what lets a LoRA run fit one 24 GB GPU. NF4 follows the QLoRA paper (Dettmers et al. 2023): a 4-bit
data type whose levels are the quantiles of a normal distribution (what trained weights look like), blockwise
absmax scales, and *double quantisation* (the scales themselves quantised to 8 bits, ~0.37 bit/parameter
saved). int8 is LLM.int8() (Dettmers et al. 2022): per-row int8 weights with the outlier features kept in
fp16.

Only the linear layers of the decoder are quantised (transformers skips the output head); embeddings and
norms keep the dtype they are loaded in. bitsandbytes is an optional dependency (`pip install
'tunelab[quant]'`): asking for quantisation without it is one `TunelabError` naming the extra.

bitsandbytes 0.50 runs all of this on a CPU as well as on CUDA, which is how the tests train for real
(tests/test_qlora.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

KINDS = ("nf4", "int8")
EXTRA = "pip install 'tunelab[quant]'"


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of `prefixes` (bitsandbytes' notes that say nothing a
    tunelab user can act on)."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_QUIET = {
    "bitsandbytes.backends.cpu.ops": _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community"),
    "bitsandbytes.autograd._functions": _DropMessages("MatMul8bitLt: inputs will be cast from"),
}


def require_bitsandbytes(what: str, field: str):
    """The `bitsandbytes` module, or one TunelabError naming the recipe `field` that asks for it and the extra
    that installs it.

    Importing it also quiets two of its log lines: on a CPU with AVX512-BF16 it tries to fetch a faster 4-bit
    kernel from the Hugging Face hub through the `kernels` package and logs a warning when that package is
    missing (it then uses its own kernel, which is what tunelab wants: nothing is downloaded at run time); and
    an int8 layer's inference path logs "inputs will be cast ... to float16" on *every* forward call, by design
    of LLM.int8() (its activations are quantised from fp16)."""
    for name, quiet in _QUIET.items():
        logging.getLogger(name).addFilter(quiet)  # the same filter object: added once however often called
    try:
        import bitsandbytes
    except ImportError as e:
        raise TunelabError(f"{what} needs bitsandbytes, which is not installed ({e}); install it with: {EXTRA}",
                           field=field) from e
    return bitsandbytes


def quantization_config(kind: str, compute_dtype: torch.dtype | None = None):
    """The transformers `BitsAndBytesConfig` for `kind`.

    nf4: NF4 with double quantisation (the QLoRA recipe). `compute_dtype` is the dtype a 4-bit layer
    dequantises its weight to and multiplies in: the run's training precision (bf16 on a GPU that does bf16,
    fp16 on one that does not, fp32 on a CPU unless the run trains in bf16); float32 when None. Under autocast
    the matmul runs at the autocast dtype whatever this says.
    int8: LLM.int8() with bitsandbytes' default outlier threshold (6.0); it has no compute dtype to choose (its
    int8 matmul quantises activations from fp16; on a CPU, training dequantises the weight to the input's dtype)."""
    import torch
    from transformers import BitsAndBytesConfig
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or torch.float32)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise TunelabError(f"unknown quantization '{kind}' (expected {', '.join(KINDS)})", field="model.quantization")


def load_quantized(path: str, kind: str, compute_dtype: torch.dtype | None = None, device=None,
                   dtype: str = "float32"):
    """`AutoModelForCausalLM.from_pretrained(path, quantization_config=…)` with the base quantised as it loads,
    straight onto `device` (a torch.device or name; default: the CPU). The weights are quantised when they are
    placed, so an 8B model never sits in memory at full precision. `dtype`: the dtype of what stays unquantised
    (embeddings, norms, output head) and of the weights before they are quantised, as `model.dtype` says."""
    require_bitsandbytes(f"model.quantization: {kind}", "model.quantization")
    from transformers import AutoModelForCausalLM

    from tunelab.model.loading import _torch_dtype, check_model_path
    check_model_path(path)
    config = quantization_config(kind, compute_dtype)
    target = str(device) if device is not None else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map={"": target},
                                                     dtype=_torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise TunelabError(f"cannot load a {kind} model ({str(e).splitlines()[0]})", file=path) from e
    log.info("loaded %s with its linear layers in %s", path, kind)
    return model


def prepare_for_kbit(model, gradient_checkpointing: bool, compute_dtype: torch.dtype | None = None):
    """Make a quantised base ready for LoRA training: peft's `prepare_model_for_kbit_training`, with what
    tunelab wants said explicitly rather than taken from its defaults.

    peft freezes every base weight and upcasts the parameters that stay unquantised from fp16/bf16 to fp32 (norms,
    embeddings, the output head), as the QLoRA paper trains: the norms and the logits the loss is computed from
    are then fp32, not bf16 rounding on top of 4-bit rounding. (It costs memory: Llama-3-8B's embedding and head
    are ~1 B parameters, 4 GB in fp32 instead of 2 GB.) peft would also turn on gradient checkpointing by default, the
    reentrant kind with a hook making the input embeddings require grad; tunelab turns it on only when
    `gradient_checkpointing` says so, and non-reentrant (no hook needed; the same kind as
    `train.gradient_checkpointing`).

    `compute_dtype` (the run's training precision; None: leave it) is set on every 4-bit layer: the precision
    is known only once the run has chosen its device, after the model is loaded.

    And the 4-bit layers keep their training layout on a CPU (`keep_training_layout`)."""
    from peft import prepare_model_for_kbit_training
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    if compute_dtype is not None:
        set_compute_dtype(model, compute_dtype)
    keep_training_layout(model)
    return model


def keep_training_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; returns how many layers.

    On a CPU with AVX512-BF16, a 4-bit layer's first forward in eval mode without gradients (a validation pass)
    repacks its weight in place for a bf16 kernel and keeps it so. Three things then go wrong for a model that
    trains on (measured with bitsandbytes 0.50.2): the next training step runs that kernel, which has no autograd,
    and backpropagates through it *silently wrong* (the LoRA factors of earlier layers got no gradient at all);
    the validation loss is computed in bf16, not the run's precision (logits 3e-3 apart on the tiny test model);
    and a layer whose output width is not a multiple of 32 fails with an AssertionError. With the switch off,
    eval-mode logits equal training-mode ones exactly and gradients after a validation pass are unchanged
    (tests/test_qlora.py). GPUs never take that path."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def set_compute_dtype(model, compute_dtype: torch.dtype) -> int:
    """Set the dtype every 4-bit layer of `model` dequantises to and multiplies in; returns how many layers.
    The model's quantization config says the same, so a saved config (and a log of it) does not disagree."""
    count = 0
    for module in model.modules():
        if hasattr(module, "compute_dtype") and hasattr(getattr(module, "weight", None), "quant_state"):
            module.compute_dtype = compute_dtype
            module.compute_type_is_set = True
            count += 1
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if count and config is not None and hasattr(config, "bnb_4bit_compute_dtype"):
        config.bnb_4bit_compute_dtype = compute_dtype
    return count

