"""The one training step the plan traces (`StepSpec`): what the training loop would run on a GPU for a recipe
(weights' dtype, LoRA or full fine-tuning, micro-batch shape, autocast, checkpointing, quantisation, optimizer),
and that step in words for the plan's `step:` line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from tunelab.model.lora import AdapterSpec
    from tunelab.recipe import Recipe


@dataclass(eq=False)
class StepSpec:
    """One training step's shape: what `measure_step` traces. `plan_memory` builds it from a recipe."""

    config: PretrainedConfig
    dtype: str = "float32"                    # the base weights' dtype (model.dtype)
    lora: AdapterSpec | None = None           # the adapter (LoRA, IA³, VeRA, LN tuning); None: every weight trains
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
    grpo: tuple | None = None                 # (prompts, completions a prompt, tokens a completion): a step that
    sampler: str = "grpo"                     # samples first, grpo's (its answers packed after their prompt) or rft's


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
        from tunelab.model.lora import AdapterSpec
        lora = (_continued_lora(m.path) if m.path else None) or AdapterSpec.from_recipe(recipe.lora)
    batch, seq_len, grpo, packing = tc.batch_size, recipe.data.max_seq_len, None, recipe.data.packing
    if tc.method == "dpo":  # a pair is two padded rows, chosen and rejected, scored by the same chunked kernel as
        batch, packing = 2 * tc.batch_size, False  # SFT's loss (the reference's forward keeps no activations)
    elif tc.method == "grpo":  # the policy's forward: a packed row a group (its prompt once), or a row an answer
        g = tc.grpo
        grpo = (tc.batch_size, g.num_generations, g.max_completion_length)
        if recipe.data.packing:
            seq_len = recipe.data.max_seq_len + (g.num_generations - 1) * g.max_completion_length
        else:
            batch = tc.batch_size * g.num_generations
    elif tc.method == "rft":  # the kept answers fine-tuned on: at most `keep` a prompt, rows of max_seq_len
        r = tc.rft
        grpo = (tc.batch_size, r.num_generations, r.max_completion_length)
        batch = min(tc.batch_size * r.keep, r.max_answers or tc.batch_size * r.keep)
    return StepSpec(config=config, dtype=dtype, lora=lora, batch_size=batch, seq_len=seq_len, grpo=grpo,
                    sampler=tc.method,
                    packing=packing, share_prefix=packing and recipe.data.share_prefix,
                    autocast=precision, gradient_checkpointing=getattr(tc, "gradient_checkpointing", False),
                    quantization=getattr(m, "quantization", "none"),
                    # paged: the same bytes on the GPU while there is room (it pages out only under pressure)
                    optimizer=getattr(tc, "optimizer", "adamw").removeprefix("paged_"),
                    grads_held=tc.grad_accum > 1)


def _continued_lora(path: str) -> AdapterSpec | None:
    """The settings of the adapter a run continues (`model.path` a LoRA run or adapter): they, not the recipe's
    `lora` section, are what trains."""
    from tunelab.model.lora import AdapterSpec
    from tunelab.convert.resolve_model import resolve_model
    from tunelab.records import read_json_object
    if not Path(path).expanduser().is_dir():
        return None
    adapter = resolve_model(path).adapter
    if adapter is None or (adapter / "config.json").is_file():
        return None
    return AdapterSpec.from_saved(read_json_object(adapter / "adapter_config.json"))


def describe_step(spec: StepSpec, trainable: int) -> str:
    """The step in words: the plan's `step:` line."""
    if spec.lora:
        what = f"{spec.lora.describe()} ({trainable:,} trainable)"
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
        if spec.sampler == "rft":
            layout = "the kept answers, " + ("packed" if spec.packing else "a row each")
        shape = (f"{spec.sampler.upper()}: {prompts} prompts x {per_prompt} sampled answers of <= {tokens} tokens; "
                 f"the policy's forward on {spec.batch_size} x {spec.seq_len} tokens ({layout})")
    return f"{what}; {shape}; weights {spec.dtype}{quant}, {precision}, {gc}, {opt}"


def torch_dtype(name: str):
    """A spec's dtype name ('bfloat16') as torch's dtype."""
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
