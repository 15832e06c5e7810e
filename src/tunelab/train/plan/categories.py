"""What the bytes of a step are: the tracker's peak sorted into weights (frozen, trainable), gradients, optimizer
states, activations, loss / logits and temporaries, with what the trace cannot see added by a stated rule (8-bit
optimizer states without bitsandbytes, quantised weights, DDP buckets, FSDP shards, a GRPO rollout's KV cache,
the CUDA context and the caching allocator's reserve)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunelab.train.plan.sizes import GiB, gib
from tunelab.train.plan.spec import StepSpec, torch_dtype

if TYPE_CHECKING:
    from tunelab.recipe import Recipe

CUDA_CONTEXT = GiB // 2          # torch's CUDA context + cuBLAS/cuDNN handles and workspaces, ~0.3-0.6 GiB by GPU
ALLOCATOR_RESERVE = 0.10         # caching allocator's reserved-but-unused share of what comes and goes in a step
# bitsandbytes NF4 with double quantisation: 4 bits a weight, an 8-bit absmax per block of 64, an fp32 absmax per
# 256 of those blocks
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES = 1.0                 # LLM.int8(): one byte a weight, plus an fp32 scale per output row

LOSS = "Loss"  # the tracker's extra category: what the loss creates after the backbone


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


def step_memory(spec: StepSpec, model, params: list, quantised: list, peak: dict, eight_bit_rule: bool,
                seconds: float) -> StepMemory:
    """The traced step's peak (`peak`: the tracker's bytes by its reference types) as `StepMemory`: `params` the
    trained parameters, `quantised` the linear layers a bitsandbytes base would hold quantised, `eight_bit_rule`
    when AdamW was traced in place of an 8-bit optimizer that is not installed here."""
    from torch.distributed._tools.mem_tracker import _MemRefType as ref

    from tunelab.model.lora import count_parameters
    notes: list[str] = []
    optimizer_states = peak.get(ref.OPT, 0)
    if eight_bit_rule:
        optimizer_states = sum(_adam_8bit_bytes(p) for p in params)
        notes.append(f"{spec.optimizer} by rule (bitsandbytes is not installed here): two 8-bit moments in blocks of "
                     "256 with an fp32 absmax each; tensors under 4,096 elements keep fp32 moments")
    elif spec.optimizer != "adamw":
        notes.append(f"{spec.optimizer} traced: bitsandbytes' optimizer stepped on the fake tensors (8-bit moments "
                     "in blocks of 256 with an fp32 absmax each; tensors under 4,096 elements keep fp32 moments)")
    trainable_params, total_params = count_parameters(model)
    trainable = _unique_bytes(params)
    weights = peak.get(ref.PARAM, 0) + peak.get(ref.BUFFER, 0)
    temporary = peak.get(ref.TEMP, 0)
    frozen = weights - trainable
    if quantised:
        held, dequantised, note = _quantised_rule(spec, quantised)
        frozen += held
        temporary += dequantised
        notes.append(note)
    return StepMemory(weights_frozen=frozen, weights_trainable=trainable, gradients=peak.get(ref.GRAD, 0),
                      optimizer_states=optimizer_states,
                      activations=peak.get(ref.ACT, 0) + peak.get(ref.OTH, 0), loss_logits=peak.get(LOSS, 0),
                      temporary=temporary, trainable_params=trainable_params, total_params=total_params,
                      trace_seconds=seconds, notes=notes)


def _quantised_rule(spec: StepSpec, quantised: list) -> tuple[int, int, str]:
    """(bytes the quantised layers hold beyond their 16-bit trace, one dequantised layer as a temporary, the note)."""
    per_weight = NF4_BYTES if spec.quantization == "nf4" else INT8_BYTES
    traced = sum(m.weight.numel() * m.weight.element_size() for m in quantised)
    held = sum(math.ceil(m.weight.numel() * per_weight) + (4 * m.out_features if spec.quantization == "int8" else 0)
               for m in quantised)
    largest = max(m.weight.numel() for m in quantised)
    dequantised = largest * (2 if spec.autocast in ("bf16", "fp16") else 4)
    note = (f"{spec.quantization} weights by rule, not traced (bitsandbytes' quantised parameters do not "
            f"wrap fake tensors): {per_weight:.3f} bytes a weight"
            + (" + an fp32 scale per row" if spec.quantization == "int8" else " (double quantisation)")
            + " for the decoder's linear layers, + one dequantised layer as a temporary")
    return held - traced, dequantised, note


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


def device_categories(recipe: Recipe, spec: StepSpec, step: StepMemory, gpus: int) -> tuple[dict[str, int], list[str]]:
    """(name -> bytes per device in table order, the notes saying which rules added what): the traced step on
    one of `gpus` devices, with DDP's buckets or FSDP's shards, a GRPO rollout's cache and the device overhead."""
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
        notes.append(f"{spec.sampler.upper()}'s sampling holds a KV cache of {gib(cache):.2f} GiB ({spec.grpo[0] * spec.grpo[1]} answers "
                     "decoding together) while no activations or gradients are live: "
                     + (f"{gib(beyond):.2f} GiB more than the training step's, counted above" if beyond else
                        "less than the training step holds"))
    reserve = math.ceil(ALLOCATOR_RESERVE * step.transient)
    cats["device overhead"] = CUDA_CONTEXT + reserve
    notes.append(f"device overhead by rule: CUDA context {gib(CUDA_CONTEXT):.2f} GiB + allocator reserve "
                 f"{gib(reserve):.2f} GiB ({ALLOCATOR_RESERVE:.0%} of activations + loss/logits + temporaries)")
    return cats, notes


def _largest_layer_bytes(spec: StepSpec) -> int:
    """The weights of the largest decoder layer: what FSDP gathers whole while it computes."""
    from tunelab.model.presets import build_on_meta
    config = copy.deepcopy(spec.config)
    config.dtype = torch_dtype(spec.dtype)
    model = build_on_meta(config)
    layers = getattr(getattr(model, model.base_model_prefix, model), "layers", None) or [model]
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)


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
    packed_group = spec.packing and spec.sampler == "grpo"  # a prompt's answers after it, in one row
    max_len = spec.seq_len - (per_prompt - 1) * spec.grpo[2] if packed_group else spec.seq_len
    return 2 * c.num_hidden_layers * kv_heads * head_dim * width * prompts * per_prompt * max_len
