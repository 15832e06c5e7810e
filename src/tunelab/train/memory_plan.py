"""Will this run fit the card? The per-device memory of ONE training step, traced through tunelab's own code.

No weights are loaded and no GPU is needed. The model is built from its config alone (a local config.json, the
Hugging Face cache, or the built-in config of a hub id the shipped recipes name), wrapped as the training loop
wraps it (`make_lora_config` + peft's `get_peft_model`, activation checkpointing, `LabelledLoss`), and one step
runs — forward, backward, gradient clipping, the optimizer's update — on *fake* tensors
(`torch._subclasses.fake_tensor.FakeTensorMode`: shapes and dtypes, no storage) under torch's `MemTracker`, which
counts every tensor the step creates, when it is freed, and what it is (weight, gradient, optimizer state,
activation, backward temporary). The optimizer's states exist before the traced step (what every step after the
first sees), and with `train.grad_accum > 1` so do the gradients (a later micro-batch runs with them held).

What the trace cannot see is added by a stated rule:
- Fake tensors are CPU tensors: a CPU build of torch aborts in the backward pass of fake CUDA tensors. Bytes do
  not depend on the device; the kernels that differ are made to match CUDA's: dropout runs as `native_dropout`
  (a 1-byte mask, as on a GPU, not the CPU path's full-width mask), and attention is the model's SDPA, which on
  fake CPU tensors takes the flash kernel (output + log-sum-exp saved, as CUDA's flash/memory-efficient kernels).
  Autocast's lists of fp32 ops differ a little between CPU and CUDA; Llama-style norms cast explicitly anyway.
- The CUDA context (driver, cuBLAS/cuDNN handles and workspaces: `CUDA_CONTEXT`) is outside torch's allocator.
- The caching allocator reserves more than it hands out; the excess comes from memory that comes and goes within a
  step: `ALLOCATOR_RESERVE` of the activations, loss/logits and temporaries.
- Under DDP each device holds the whole replica plus the reducer's gradient buckets (as large as the gradients:
  the loop does not set `gradient_as_bucket_view`). FSDP (`train.strategy: fsdp`, if the recipe has it) is a
  rule here, not traced: the persistent state (weights, gradients, optimizer states) split N ways plus two
  gathered decoder layers.
- Quantised bases (`model.quantization: nf4|int8`) do not trace (bitsandbytes' `Params4bit` cannot wrap a fake
  tensor): the step is traced with the quantised linear layers in 16 bits — everything else as tunelab's QLoRA
  has it (norms, embeddings and head upcast to fp32 by `prepare_for_kbit`) — and their bytes are replaced by
  `NF4_BYTES` / `INT8_BYTES` per weight, plus one dequantised layer as a temporary. 8-bit optimizers trace.

The micro-batch is `train.batch_size` full rows of `data.max_seq_len` tokens (packed: every row full; unpacked:
padded to the longest, at worst the maximum), every position labelled: an upper bound (answer-only loss labels
fewer, and a corpus or replayed block labels all; with a frozen head the loss is chunked, so the difference is
small; with a trained head the logits' gradient scales with the labelled positions).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from tunelab.recipe import Recipe

GiB = 2 ** 30
CUDA_CONTEXT = GiB // 2          # torch's CUDA context + cuBLAS/cuDNN handles and workspaces, ~0.3-0.6 GiB by GPU
ALLOCATOR_RESERVE = 0.10         # caching allocator's reserved-but-unused share of what comes and goes in a step
# bitsandbytes NF4 with double quantisation: 4 bits a weight, an 8-bit absmax per block of 64, an fp32 absmax per
# 256 of those blocks
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES = 1.0                 # LLM.int8(): one byte a weight, plus an fp32 scale per output row

# hub ids the shipped recipes name -> the preset with the same config.json (no network, no weights)
BUILTIN_HUB_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-8b",
    "meta-llama/Llama-3.1-8B": "llama3-8b",         # rope scaling and context differ: the same bytes a step
    "meta-llama/Llama-3.1-8B-Instruct": "llama3-8b",
    "google/gemma-2b": "gemma-2b",
}

_LOSS = "Loss"  # the tracker's extra category: what the loss creates after the backbone


@dataclass(eq=False)
class StepSpec:
    """One training step's shape: what `measure_step` traces. `plan_memory` builds it from a recipe."""

    config: PretrainedConfig
    dtype: str = "float32"                    # the base weights' dtype (model.dtype)
    lora: tuple | None = None                 # (rank, alpha, dropout, target_modules); None: every weight trains
    batch_size: int = 4
    seq_len: int = 256
    packing: bool = True
    share_prefix: bool = False
    autocast: str | None = "bf16"             # bf16 | fp16 | None (fp32)
    gradient_checkpointing: bool = False
    quantization: str = "none"                # none | nf4 | int8
    fp32_unquantized: bool = True             # QLoRA: norms, embeddings, head in fp32 (`prepare_for_kbit`)
    optimizer: str = "adamw"                  # adamw | adamw_8bit | paged_adamw_8bit
    grads_held: bool = False                  # gradient accumulation: gradients exist before the micro-batch
    grpo: tuple | None = None                 # (prompts, completions a prompt, tokens a completion): a GRPO step


@dataclass
class StepMemory:
    """Bytes live at the step's peak, by what they are (one device, before the device terms)."""

    weights_frozen: int
    weights_trainable: int
    gradients: int
    optimizer_states: int
    activations: int
    loss_logits: int
    temporary: int
    trainable_params: int
    total_params: int
    trace_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return (self.weights_frozen + self.weights_trainable + self.gradients + self.optimizer_states
                + self.activations + self.loss_logits + self.temporary)

    @property
    def transient(self) -> int:
        """What comes and goes within a step (the allocator's fragmentation comes from it)."""
        return self.activations + self.loss_logits + self.temporary


@dataclass
class Advice:
    """One change to the recipe, re-estimated."""

    sets: list[str]            # the --set arguments
    what: str
    total_bytes: int
    fits: bool


@dataclass
class Plan:
    recipe: str
    model: str                 # where the config came from
    step: str                  # the step traced, in words
    gpus: int
    gpu_memory: int
    categories: dict[str, int]  # name -> bytes per device, in table order, the total excluded
    total: int
    fits: bool
    trace_seconds: float
    notes: list[str] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)


# --- sizes ----------------------------------------------------------------------------------------

_UNITS = {"": GiB, "k": 2 ** 10, "m": 2 ** 20, "g": GiB, "t": 2 ** 40}


def parse_memory_size(text: str, field: str = "gpu_memory") -> int:
    """'24GiB', '24GB', '80G', '24' (GiB), '16384MiB' -> bytes. GB and GiB are both 2**30 bytes: a "24 GB" card
    holds 24 GiB (an RTX 4090 reports 24,564 MiB), as nvidia-smi counts."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise TunelabError(f"expected a memory size such as 24GiB, 24GB, 80G or 16384MiB, got {text!r}", field=field)
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def gib(n: float) -> float:
    return n / GiB


# --- the model's config without weights ----------------------------------------------------------

def model_config(recipe: Recipe) -> tuple[PretrainedConfig, str]:
    """(config, where it came from) for the recipe's model, offline: a preset (vocabulary from the tokenizer it
    will have), a local directory / run directory / adapter / MindFormers YAML, the HF cache, or a built-in
    config for the hub ids the shipped recipes name."""
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
    return _path_config(m.path, "model.path")


def _path_config(path: str, field: str) -> tuple[PretrainedConfig, str]:
    from tunelab.model.presets import load_config, preset_config
    from tunelab.runs import is_run_dir, pick_checkpoint
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir() and is_run_dir(p):
            p = pick_checkpoint(p)
        if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
            from tunelab.records import read_json_object
            base = read_json_object(p / "adapter_config.json").get("base_model_name_or_path")
            if not base:
                raise TunelabError("adapter has no base_model_name_or_path", file=p / "adapter_config.json")
            config, said = _path_config(base, field)
            return config, f"{path} (adapter) on {said}"
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
    raise TunelabError(f"no config.json for '{path}': not a local directory (a run this recipe starts from that has "
                       "not run yet?), not in the Hugging Face cache, and not a hub id tunelab knows offline. The plan "
                       f"needs the model's config, not its weights: a directory holding config.json, the config in "
                       f"the Hugging Face cache (`hf download {hub_id} config.json`), or the architecture by preset "
                       "(model.path: null, model.preset: NAME)", field=field)


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


# --- the step -------------------------------------------------------------------------------------

def step_spec(recipe: Recipe, config: PretrainedConfig) -> StepSpec:
    """The step the training loop would run on a GPU for this recipe."""
    tc, m = recipe.train, recipe.model
    if m.from_scratch:
        dtype = "float32"  # built from its config: fp32 whatever model.dtype says (model/loading.py)
    elif m.dtype == "auto":
        dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    else:
        dtype = m.dtype
    precision = {"fp32": None, "fp16": "fp16"}.get(tc.precision, "bf16")  # auto on a GPU: bf16, or fp16 (same bytes)
    lora = None
    if recipe.lora.enabled:
        lora = (_continued_lora(m.path) if m.path else None) or (recipe.lora.rank, recipe.lora.alpha,
                                                                   recipe.lora.dropout, recipe.lora.target_modules)
    batch, seq_len, grpo = tc.batch_size, recipe.data.max_seq_len, None
    if tc.method == "grpo":  # the policy's forward: a packed row a group (its prompt once), or a row an answer
        g = tc.grpo
        grpo = (tc.batch_size, g.num_generations, g.max_completion_length)
        if recipe.data.packing:
            seq_len = recipe.data.max_seq_len + (g.num_generations - 1) * g.max_completion_length
        else:
            batch = tc.batch_size * g.num_generations
    return StepSpec(config=config, dtype=dtype, lora=lora, batch_size=batch, seq_len=seq_len, grpo=grpo,
                    packing=recipe.data.packing, share_prefix=recipe.data.packing and recipe.data.share_prefix,
                    autocast=precision, gradient_checkpointing=getattr(tc, "gradient_checkpointing", False),
                    quantization=getattr(m, "quantization", "none"),
                    # paged: the same bytes on the GPU while there is room (it pages out only under pressure)
                    optimizer=getattr(tc, "optimizer", "adamw").removeprefix("paged_"),
                    grads_held=tc.grad_accum > 1)


def _continued_lora(path: str) -> tuple | None:
    """The LoRA settings of the adapter a run continues (`model.path` a LoRA run or adapter): they, not the
    recipe's `lora` section, are what trains."""
    from tunelab.records import read_json_object
    from tunelab.runs import is_run_dir, pick_checkpoint
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if is_run_dir(p):
        p = pick_checkpoint(p)
    if not (p / "adapter_config.json").is_file() or (p / "config.json").is_file():
        return None
    c = read_json_object(p / "adapter_config.json")
    return c.get("r", 8), c.get("lora_alpha", 8), c.get("lora_dropout", 0.0), c.get("target_modules")


def rollout_cache_bytes(spec: StepSpec) -> int:
    """A GRPO step's sampling KV cache: every answer of the micro-batch decoding at once, each row up to the
    recipe's `max_seq_len` (prompt and answer), keys and values of every layer in the compute dtype."""
    if not spec.grpo:
        return 0
    prompts, per_prompt, _ = spec.grpo
    c = spec.config
    heads = getattr(c, "num_attention_heads", 1)
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    width = {"bf16": 2, "fp16": 2}.get(spec.autocast, 4) if spec.quantization == "none" else 2
    max_len = spec.seq_len - (per_prompt - 1) * spec.grpo[2] if spec.packing else spec.seq_len
    return 2 * c.num_hidden_layers * kv_heads * head_dim * width * prompts * per_prompt * max_len


def describe_step(spec: StepSpec, trainable: int) -> str:
    if spec.lora:
        rank, _, _, target = spec.lora
        shown = target if isinstance(target, str) else "|".join(target)
        what = f"LoRA r {rank} on {shown} ({trainable:,} trainable)"
    else:
        what = f"full fine-tuning ({trainable:,} trainable)"
    rows = "packed rows" if spec.packing else "rows padded to the longest"
    precision = f"{spec.autocast} autocast" if spec.autocast else "fp32"
    quant = f", base in {spec.quantization}" if spec.quantization != "none" else ""
    gc = "gradient checkpointing" if spec.gradient_checkpointing else "no gradient checkpointing"
    opt = {"adamw": "AdamW"}.get(spec.optimizer, spec.optimizer)
    shape = f"micro-batch {spec.batch_size} x {spec.seq_len} tokens ({rows}, every position labelled)"
    if spec.grpo:
        prompts, per_prompt, tokens = spec.grpo
        layout = "a packed row a prompt: it once, its answers after it" if spec.packing else "a row an answer"
        shape = (f"GRPO: {prompts} prompts x {per_prompt} sampled answers of <= {tokens} tokens; the policy's "
                 f"forward on {spec.batch_size} x {spec.seq_len} tokens ({layout})")
    return f"{what}; {shape}; weights {spec.dtype}{quant}, {precision}, {gc}, {opt}"


def _torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _swap_lora_dropout(model) -> None:
    """peft's LoRA dropouts (nn.Dropout inside each `lora_dropout` ModuleDict) as `native_dropout`."""
    import torch
    from torch import nn

    class NativeDropout(nn.Dropout):
        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            return torch.native_dropout(x, self.p, True)[0]

    for name, module in model.named_modules():
        if name.endswith("lora_dropout") and isinstance(module, nn.ModuleDict):
            for key, child in list(module.items()):
                if type(child) is nn.Dropout:
                    module[key] = NativeDropout(child.p)


def _tracker():
    """torch's MemTracker with three changes: frozen parameters get no gradient hooks (MemTracker would hook
    every parameter, and a frozen one refuses); what the loss creates after the backbone is its own category;
    only the whole step's peak is kept (the per-module peaks cost a pass over every module at every operation:
    50 s instead of 3 s for an 8B step)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class StepTracker(MemTracker):
        def __init__(self):
            super().__init__()
            self._ref_class = [*_MemRefType, _LOSS]
            self.in_loss = False

        def _track(self, reftype, t):
            if self.in_loss and reftype in (_MemRefType.ACT, _MemRefType.TEMP):
                reftype = _LOSS
            super()._track(reftype, t)

        def _update_peak_stats(self, peak_state):
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            def grad_hook(grad):
                self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

            params = 0
            for param in module.parameters():
                params += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(param, _MemRefType.PARAM))
                if param.grad is not None:
                    self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
                if install_grad_hooks and param.requires_grad and \
                        self._param_to_grad_hook_handles.get(param, None) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)))
            buffers = sum(w.mem_consumed for b in module.buffers()
                          for w in self._update_and_maybe_create_winfos(b, _MemRefType.BUFFER))
            return params, buffers

    return StepTracker(), _MemRefType


def _all_labelled_mode():
    """A dispatch mode for the fake trace: boolean-mask indexing (`hidden[where]`, the loss's labelled positions)
    has a data-dependent size that fake tensors cannot know; every position is labelled, so the mask is replaced
    by the index tensors of an all-true mask (same shapes, same bytes)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    aten = torch.ops.aten
    indexing = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}

    def all_true(mask):
        shape = mask.shape
        return [torch.arange(n, device=mask.device).repeat_interleave(math.prod(shape[d + 1:])).repeat(
            math.prod(shape[:d])) for d, n in enumerate(shape)]

    class AllLabelled(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in indexing and any(i is not None and i.dtype == torch.bool for i in args[1]):
                indices = []
                for i in args[1]:
                    indices += all_true(i) if i is not None and i.dtype == torch.bool else [i]
                args = (args[0], indices, *args[2:])
            return func(*args, **(kwargs or {}))

    return AllLabelled()


def _materialise(model, device: str) -> None:
    """Every meta parameter and buffer replaced by an empty tensor on `device` (fake, inside FakeTensorMode),
    tied weights kept tied (`Module.to_empty` unties them when the tensor type changes)."""
    import torch
    from torch import nn
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
                module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = torch.empty_like(b, device=device)
                module._buffers[name] = memo[id(b)]


def _quiet() -> None:
    """The log lines tunelab's training silences too: transformers' notes, bitsandbytes' (imported by peft)."""
    from tunelab.model.loading import quiet_transformers
    from tunelab.model.quantization import require_bitsandbytes
    quiet_transformers()
    with contextlib.suppress(TunelabError):
        require_bitsandbytes("model.quantization", "model.quantization")


def _unique_bytes(params) -> int:
    seen, total = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def _adam_8bit_bytes(p) -> int:
    """bitsandbytes' 8-bit AdamW state of one parameter: two uint8 moments and an fp32 absmax per 256 of each
    (`min_8bit_size` 4,096: smaller tensors keep two fp32 moments)."""
    n = p.numel()
    return 2 * (n + 4 * math.ceil(n / 256)) if n >= 4096 else 8 * n


def _quantised_linears(model) -> list:
    """The linear layers a bitsandbytes quantisation replaces: every nn.Linear but the output head."""
    from torch import nn
    head = model.get_output_embeddings()
    return [m for m in model.modules() if type(m) is nn.Linear and m is not head]


def measure_step(spec: StepSpec, fake: bool = True) -> StepMemory:
    """Trace one training step of `spec` and return what is live at its peak. `fake=False` runs the same step
    for real on CPU tensors (small models: it allocates what it measures)."""
    import torch

    from tunelab.model.activation_checkpointing import enable_activation_checkpointing
    from tunelab.model.lora import (
        check_targets_matched,
        make_lora_config,
        skip_lora_input_casts,
    )
    from tunelab.model.presets import build_on_meta
    from tunelab.decoding.rotary import fast_rotary
    from tunelab.train.methods.sft_loss import LabelledLoss
    from tunelab.train.optimizers import build_optimizer

    t0 = time.perf_counter()
    notes: list[str] = []
    _quiet()
    if spec.quantization != "none" and not fake:
        raise ValueError("a quantised base is traced only (fake=True)")
    config = copy.deepcopy(spec.config)
    config.dtype = _torch_dtype(spec.dtype)
    config.use_cache = False
    if fake:
        model = build_on_meta(config)
    else:
        from transformers import AutoModelForCausalLM
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    quantised: list = []
    if spec.quantization != "none":
        # what `prepare_for_kbit` does to a quantised base: everything but the quantised layers in fp32
        quantised = _quantised_linears(model)
        kept = {id(m.weight) for m in quantised}
        for p in model.parameters():
            p.requires_grad_(False)
            if spec.fp32_unquantized and id(p) not in kept and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
    if spec.lora:
        from peft import get_peft_model
        rank, alpha, dropout, target = spec.lora
        check_targets_matched(model, target)
        model = get_peft_model(model, make_lora_config(rank, alpha, dropout, target))
        _swap_lora_dropout(model)
        if spec.autocast:
            skip_lora_input_casts(model)
    if spec.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    loss_model = LabelledLoss(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None)

    B, S = spec.batch_size, spec.seq_len
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}.get(spec.autocast)  # fp16: the same bytes
    rotary = fast_rotary(model)  # its exactness check runs on real tensors, before the fake mode
    rotary.__enter__()
    modes = contextlib.ExitStack()
    try:
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            with fake_mode:
                _materialise(model, "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.0},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # built outside the fake mode: bitsandbytes reads its quantisation map's values when it is made
        eight_bit_rule = False
        try:
            optimizer = build_optimizer(groups, spec.optimizer, lr=1e-4, betas=(0.9, 0.95), fused=True)
        except TunelabError:  # no bitsandbytes here: AdamW traced, its states' bytes replaced by the rule below
            if spec.optimizer == "adamw":
                raise
            optimizer, eight_bit_rule = build_optimizer(groups, "adamw", lr=1e-4, betas=(0.9, 0.95), fused=True), True
        if fake:
            modes.enter_context(fake_mode)
        # the states every step after the first starts with
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if spec.grads_held:
            for p in params:
                p.grad = torch.zeros_like(p)
        ids = torch.zeros(B, S, dtype=torch.long)
        batch = {"input_ids": ids, "labels": torch.zeros(B, S, dtype=torch.long)}
        if spec.packing:
            # two samples a row: transformers then builds the packed rows' block-diagonal mask, as in training
            batch["position_ids"] = torch.cat([torch.arange(S // 2), torch.arange(S - S // 2)]).repeat(B, 1)
            if spec.share_prefix:
                batch["attention_mask"] = torch.ones(B, 1, S, S, dtype=torch.bool).tril()
        else:
            batch["attention_mask"] = torch.ones(B, S, dtype=torch.long)

        tracker, ref = _tracker()
        tracker.track_external(model, optimizer, *batch.values())
        hooks = [loss_model.register_forward_hook(lambda *a: setattr(tracker, "in_loss", False))]
        if backbone is not None:
            hooks.append(backbone.register_forward_hook(lambda *a: setattr(tracker, "in_loss", True)))
        else:
            head = base.get_output_embeddings()
            hooks.append(head.register_forward_pre_hook(lambda *a: setattr(tracker, "in_loss", True)))
        with tracker, _all_labelled_mode() if fake else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = loss_model(**batch, num_items_in_batch=B * (S - 1))
            loss.backward()
            del loss
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for h in hooks:
            h.remove()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    finally:
        modes.close()
        rotary.__exit__(None, None, None)

    optimizer_states = peak.get(ref.OPT, 0)
    if eight_bit_rule:
        optimizer_states = sum(_adam_8bit_bytes(p) for p in params)
        notes.append(f"{spec.optimizer} by rule (bitsandbytes is not installed here): two 8-bit moments in blocks of "
                     "256 with an fp32 absmax each; tensors under 4,096 elements keep fp32 moments")
    elif spec.optimizer != "adamw":
        notes.append(f"{spec.optimizer} traced: bitsandbytes' optimizer stepped on the fake tensors (8-bit moments "
                     "in blocks of 256 with an fp32 absmax each; tensors under 4,096 elements keep fp32 moments)")
    from tunelab.model.lora import count_parameters
    trainable_params, total_params = count_parameters(model)
    trainable = _unique_bytes(params)
    weights = peak.get(ref.PARAM, 0) + peak.get(ref.BUFFER, 0)
    temporary = peak.get(ref.TEMP, 0)
    frozen = weights - trainable
    if quantised:
        per_weight = NF4_BYTES if spec.quantization == "nf4" else INT8_BYTES
        traced = sum(m.weight.numel() * m.weight.element_size() for m in quantised)
        held = sum(math.ceil(m.weight.numel() * per_weight) + (4 * m.out_features if spec.quantization == "int8" else 0)
                   for m in quantised)
        frozen += held - traced
        largest = max(m.weight.numel() for m in quantised)
        temporary += largest * (2 if autocast_dtype is not None else 4)
        notes.append(f"{spec.quantization} weights by rule, not traced (bitsandbytes' quantised parameters do not "
                     f"wrap fake tensors): {per_weight:.3f} bytes a weight"
                     + (" + an fp32 scale per row" if spec.quantization == "int8" else " (double quantisation)")
                     + " for the decoder's linear layers, + one dequantised layer as a temporary")
    return StepMemory(weights_frozen=frozen, weights_trainable=trainable, gradients=peak.get(ref.GRAD, 0),
                      optimizer_states=optimizer_states,
                      activations=peak.get(ref.ACT, 0) + peak.get(ref.OTH, 0), loss_logits=peak.get(_LOSS, 0),
                      temporary=temporary, trainable_params=trainable_params, total_params=total_params,
                      trace_seconds=time.perf_counter() - t0, notes=notes)


# --- the plan -------------------------------------------------------------------------------------

def plan_memory(recipe: Recipe, gpu_memory_bytes: int, gpus: int = 1) -> Plan:
    """The per-device memory of one training step of `recipe` on `gpus` GPUs of `gpu_memory_bytes` each."""
    if gpus < 1:
        raise TunelabError(f"must be at least 1, got {gpus}", field="gpus")
    config, source = model_config(recipe)
    spec = step_spec(recipe, config)
    return _plan(recipe, spec, source, gpu_memory_bytes, gpus)


def _plan(recipe: Recipe, spec: StepSpec, source: str, gpu_memory_bytes: int, gpus: int) -> Plan:
    step = measure_step(spec)
    notes = list(step.notes)
    if getattr(recipe.train, "optimizer", "").startswith("paged_"):
        notes.append("paged_adamw_8bit counted as adamw_8bit: the same bytes on the GPU while there is room (it "
                     "pages its states out to host memory only under pressure)")
    cats = {"weights (frozen)": step.weights_frozen, "weights (trainable)": step.weights_trainable,
            "gradients": step.gradients, "optimizer states": step.optimizer_states,
            "activations": step.activations, "loss / logits": step.loss_logits,
            "temporary / workspace": step.temporary}
    has_fsdp = hasattr(recipe.train, "strategy")
    if gpus > 1 and getattr(recipe.train, "strategy", "ddp") == "fsdp":
        for key in ("weights (frozen)", "weights (trainable)", "gradients", "optimizer states"):
            cats[key] = math.ceil(cats[key] / gpus)
        cats["FSDP gathered layers"] = 2 * _largest_layer_bytes(spec)
        notes.append(f"FSDP over {gpus} GPUs by rule, not traced: weights, gradients and optimizer states split "
                     f"{gpus} ways, plus two decoder layers gathered whole (the one computing, the one prefetched)")
    elif gpus > 1:
        cats["DDP gradient buckets"] = step.weights_trainable
        notes.append(f"DDP: each of the {gpus} GPUs holds the whole replica, plus the reducer's gradient buckets "
                     "(as large as the gradients); " + ("train.strategy: fsdp would shard them" if has_fsdp else
                                                        "FSDP sharding does not exist in tunelab yet"))
    cache = rollout_cache_bytes(spec)
    if cache:  # sampling holds the cache and no activations; the step's peak is the larger phase
        beyond = max(0, cache - step.transient - step.gradients)
        if beyond:
            cats["rollout beyond the step"] = beyond
        notes.append(f"GRPO's sampling holds a KV cache of {gib(cache):.2f} GiB ({spec.grpo[0] * spec.grpo[1]} answers "
                     "decoding together) while no activations or gradients are live: "
                     + (f"{gib(beyond):.2f} GiB more than the training step's, counted above" if beyond else
                        "less than the training step holds"))
    reserve = math.ceil(ALLOCATOR_RESERVE * step.transient)
    cats["device overhead"] = CUDA_CONTEXT + reserve
    notes.append(f"device overhead by rule: CUDA context {gib(CUDA_CONTEXT):.2f} GiB + allocator reserve "
                 f"{gib(reserve):.2f} GiB ({ALLOCATOR_RESERVE:.0%} of activations + loss/logits + temporaries)")
    total = sum(cats.values())
    return Plan(recipe=recipe.name, model=source, step=describe_step(spec, step.trainable_params), gpus=gpus,
                gpu_memory=gpu_memory_bytes, categories=cats, total=total, fits=total <= gpu_memory_bytes,
                trace_seconds=step.trace_seconds, notes=notes)


def _largest_layer_bytes(spec: StepSpec) -> int:
    from tunelab.model.presets import build_on_meta
    config = copy.deepcopy(spec.config)
    config.dtype = _torch_dtype(spec.dtype)
    model = build_on_meta(config)
    layers = getattr(getattr(model, model.base_model_prefix, model), "layers", None) or [model]
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)


def advise(recipe: Recipe, plan: Plan) -> list[Advice]:
    """Changes that make a run that does not fit fit, each re-estimated: gradient checkpointing, a smaller
    micro-batch with more accumulation (the same rows a step), a 4-bit base (LoRA), 8-bit AdamW; when none fits
    alone, the first combination of them (in that order) that does. A change that saves under 0.05 GiB is left
    out."""
    if plan.gpu_memory <= CUDA_CONTEXT:
        return []  # the CUDA context alone fills the card
    config, source = model_config(recipe)
    tc = recipe.train
    knobs: list[tuple[dict, str]] = []
    if not getattr(tc, "gradient_checkpointing", True):
        knobs.append(({"train.gradient_checkpointing": True},
                      "recompute each layer's activations in the backward pass: ~30 % more compute"))
    if tc.batch_size > 1:
        knobs.append(({}, _SMALLER_BATCH))
    if getattr(recipe.model, "quantization", None) == "none" and recipe.lora.enabled and recipe.model.path:
        knobs.append(({"model.quantization": "nf4"}, "QLoRA: the frozen base in 4-bit NF4, needs bitsandbytes"))
    if getattr(tc, "optimizer", None) == "adamw":
        knobs.append(({"train.optimizer": "adamw_8bit"}, "8-bit AdamW moments, needs bitsandbytes"))

    def useful(a: Advice | None) -> bool:
        return a is not None and a.total_bytes < plan.total - GiB // 20

    out: list[Advice] = []
    for changes, what in knobs:
        a = (_smaller_batch(recipe, plan, config, source, {}) if what == _SMALLER_BATCH
             else _advice(recipe, plan, config, source, changes, what))
        if useful(a):
            out.append(a)
    if any(a.fits for a in out):
        return out
    combined: dict = {}
    for changes, what in knobs:
        if what == _SMALLER_BATCH:
            a = _smaller_batch(recipe, plan, config, source, combined)
        else:
            combined.update(changes)
            a = _advice(recipe, plan, config, source, combined, "together")
        if a is not None and a.fits:
            a.what = "together"
            out.append(a)
            break
    return out


_SMALLER_BATCH = "a smaller micro-batch"  # searched by `_smaller_batch`, not one fixed change


def _advice(recipe: Recipe, plan: Plan, config, source: str, changes: dict, what: str) -> Advice | None:
    estimate = _estimate(recipe, changes, config, source, plan)
    if estimate is None:
        return None
    sets = [f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items()]
    return Advice(sets, what, estimate.total, estimate.fits)


def _smaller_batch(recipe: Recipe, plan: Plan, config, source: str, changes: dict) -> Advice | None:
    """The largest micro-batch (halving) that fits with `changes`, grad_accum raised to keep the rows a step;
    a batch of 1 when none does."""
    tc = recipe.train
    batch, accum, last = tc.batch_size, tc.grad_accum, None
    while batch > 1:
        batch, accum = (batch + 1) // 2, accum * 2
        last = _advice(recipe, plan, config, source,
                       {**changes, "train.batch_size": batch, "train.grad_accum": accum},
                       f"the same {tc.batch_size * tc.grad_accum} rows a step"
                       + (f" on each of the {plan.gpus} GPUs" if plan.gpus > 1 else ""))
        if last is None or last.fits:
            break
    return last


def _estimate(recipe: Recipe, changes: dict, config, source: str, plan: Plan) -> Plan | None:
    """The plan of the recipe with `changes` (dotted keys), or None when the recipe refuses them."""
    from pydantic import ValidationError
    changed = recipe.model_copy(deep=True)
    try:
        for key, value in changes.items():
            section, name = key.split(".")
            setattr(getattr(changed, section), name, value)
    except (ValidationError, AttributeError, ValueError):
        return None
    return _plan(changed, step_spec(changed, config), source, plan.gpu_memory, plan.gpus)


# --- output ---------------------------------------------------------------------------------------

def format_plan(plan: Plan) -> str:
    card = f"{plan.gpus} x {gib(plan.gpu_memory):.1f} GiB" if plan.gpus > 1 else f"{gib(plan.gpu_memory):.1f} GiB"
    lines = [f"tunelab plan: {plan.recipe} on {card} (per device)",
             f"model: {plan.model}", f"step:  {plan.step}", ""]
    width = max(len(k) for k in plan.categories) + 2
    for name, n in plan.categories.items():
        lines.append(f"  {name:<{width}}{gib(n):8.2f} GiB")
    lines.append("  " + "-" * (width + 12))
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    margin = plan.gpu_memory - plan.total
    how = f"{gib(margin):.1f} GiB to spare" if plan.fits else f"{gib(-margin):.1f} GiB over"
    lines.append(f"  {'total peak':<{width}}{gib(plan.total):8.2f} GiB   of {gib(plan.gpu_memory):.1f} GiB: "
                 f"{verdict} ({how})")
    if plan.advice:
        lines += ["", "to fit, each re-estimated:"]
        shown = [" ".join(a.sets) for a in plan.advice]
        w = max(len(s) for s in shown)
        for a, s in zip(plan.advice, shown):
            lines.append(f"  {s:<{w}}  -> {gib(a.total_bytes):5.1f} GiB  {'fits' if a.fits else 'does not fit'}"
                         f"  ({a.what})")
    elif not plan.fits:
        lines += ["", "no single recipe change tunelab knows makes it fit: a larger card, or more GPUs with FSDP"]
    lines += [""] + [f"note: {n}" for n in plan.notes]
    lines.append(f"traced one step on fake tensors (torch MemTracker) in {plan.trace_seconds:.1f} s")
    return "\n".join(lines)


def plan_to_json(plan: Plan) -> dict:
    out = asdict(plan)
    out["categories_gib"] = {k: round(gib(v), 3) for k, v in plan.categories.items()}
    out["total_gib"] = round(gib(plan.total), 3)
    out["gpu_memory_gib"] = round(gib(plan.gpu_memory), 3)
    for a in out["advice"]:
        a["total_gib"] = round(gib(a["total_bytes"]), 3)
    return out


def check_fits(recipe: Recipe, device, world: int) -> tuple[Plan | None, str | None]:
    """At the start of a run on a GPU: (the plan for the card it is on, or None off a GPU; why it would not fit
    and what would make it, or None). A run that cannot fit fails in seconds instead of at its first step's
    out-of-memory after minutes of loading."""
    if device.type != "cuda":
        return None, None
    import torch
    props = torch.cuda.get_device_properties(device)
    plan = plan_memory(recipe, props.total_memory, world)
    if plan.fits:
        return plan, None
    changes = "; ".join(f"{' '.join(a.sets)} ({a.what}): {gib(a.total_bytes):.1f} GiB"
                        for a in advise(recipe, plan) if a.fits)
    return plan, (f"this run needs about {gib(plan.total):.1f} GiB a device and {props.name} has "
                  f"{gib(props.total_memory):.1f} GiB (by tunelab's memory plan of one training step)"
                  + (f"; what fits: {changes}" if changes else "")
                  + ". The plan is an estimate: train.memory_check: false starts the run anyway")
