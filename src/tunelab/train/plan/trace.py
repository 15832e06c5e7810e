"""One training step traced on fake tensors: the model built from its config alone and wrapped as the training
loop wraps it (QLoRA's fp32 upcasts, `make_lora_config` + peft's `get_peft_model`, activation checkpointing,
`LabelledLoss`), its optimizer's states already there, then forward, backward, gradient clipping and the update
under torch's `MemTracker` (`torch._subclasses.fake_tensor.FakeTensorMode`: shapes and dtypes, no storage).

Fake tensors are CPU tensors (a CPU build of torch aborts in the backward pass of fake CUDA tensors); bytes do not
depend on the device, and the kernels that differ are made to match CUDA's: dropout runs as `native_dropout` (a
1-byte mask, as on a GPU), attention is the model's SDPA, which on fake CPU tensors takes the flash kernel (output
+ log-sum-exp saved, as CUDA's flash/memory-efficient kernels). Quantised bases do not trace (bitsandbytes'
`Params4bit` cannot wrap a fake tensor): their linear layers trace in 16 bits and `categories` replaces their bytes.

The micro-batch is `batch_size` full rows of `seq_len` tokens, every position labelled: an upper bound.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any

from tunelab.errors import TunelabError
from tunelab.train.plan.categories import LOSS, StepMemory, step_memory
from tunelab.train.plan.spec import StepSpec, torch_dtype


def measure_step(spec: StepSpec, fake: bool = True) -> StepMemory:
    """Trace one training step of `spec` and return what is live at its peak. `fake=False` runs the same step
    for real on CPU tensors (small models: it allocates what it measures)."""
    from tunelab.model.kernels.rotary import fast_rotary
    from tunelab.train.methods.sft_loss import LabelledLoss

    t0 = time.perf_counter()
    _quiet()
    if spec.quantization != "none" and not fake:
        raise ValueError("a quantised base is traced only (fake=True)")
    model, quantised = _trainable_model(spec, fake)
    loss_model = LabelledLoss(model)
    rotary = fast_rotary(model)  # its exactness check runs on real tensors, before the fake mode
    rotary.__enter__()
    modes = contextlib.ExitStack()
    try:
        fake_mode = _fake_weights(model) if fake else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, eight_bit_rule = _optimizer(params, spec.optimizer)
        if fake_mode is not None:
            modes.enter_context(fake_mode)
        _states_before_the_step(params, optimizer, spec.grads_held)
        peak = _traced_step(model, loss_model, optimizer, params, _micro_batch(spec), spec, fake)
    finally:
        modes.close()
        rotary.__exit__(None, None, None)
    return step_memory(spec, model, params, quantised, peak, eight_bit_rule, time.perf_counter() - t0)


def _trainable_model(spec: StepSpec, fake: bool):
    """(the model as the training loop makes it trainable, on the meta device when `fake`; the linear layers a
    quantised base would hold in bitsandbytes' types)."""
    import torch

    from tunelab.model.activation_checkpointing import enable_activation_checkpointing
    from tunelab.model.lora import add_adapter, skip_lora_input_casts
    from tunelab.model.presets import build_on_meta
    config = copy.deepcopy(spec.config)
    config.dtype = torch_dtype(spec.dtype)
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
        model = add_adapter(model, spec.lora)
        _swap_lora_dropout(model)
        if spec.autocast:
            skip_lora_input_casts(model)
    if spec.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    return model, quantised


def _fake_weights(model):
    """The model's meta weights made fake tensors; the fake mode returned, for the step to run in."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        _materialise(model, "cpu")
    return fake_mode


def _optimizer(params: list, name: str):
    """(the training loop's optimizer over `params`, whether 8-bit states are left to the rule: AdamW traced in
    place of a bitsandbytes optimizer that is not installed here). Built outside the fake mode: bitsandbytes reads
    its quantisation map's values when it is made."""
    from tunelab.train.optimizers import build_optimizer
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.0},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return build_optimizer(groups, name, lr=1e-4, betas=(0.9, 0.95), fused=True), False
    except TunelabError:  # no bitsandbytes here: AdamW traced, its states' bytes replaced by the rule
        if name == "adamw":
            raise
        return build_optimizer(groups, "adamw", lr=1e-4, betas=(0.9, 0.95), fused=True), True


def _states_before_the_step(params: list, optimizer, grads_held: bool) -> None:
    """The optimizer's states every step after the first starts with; with gradient accumulation, the gradients
    a later micro-batch runs with."""
    import torch
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if grads_held:
        for p in params:
            p.grad = torch.zeros_like(p)


def _micro_batch(spec: StepSpec) -> dict:
    """`batch_size` rows of `seq_len` tokens, every position labelled, as the loop feeds them."""
    import torch
    B, S = spec.batch_size, spec.seq_len
    ids = torch.zeros(B, S, dtype=torch.long)
    batch = {"input_ids": ids, "labels": torch.zeros(B, S, dtype=torch.long)}
    if spec.packing:
        # two samples a row: transformers then builds the packed rows' block-diagonal mask, as in training
        batch["position_ids"] = torch.cat([torch.arange(S // 2), torch.arange(S - S // 2)]).repeat(B, 1)
        if spec.share_prefix:
            batch["attention_mask"] = torch.ones(B, 1, S, S, dtype=torch.bool).tril()
    else:
        batch["attention_mask"] = torch.ones(B, S, dtype=torch.long)
    return batch


def _traced_step(model, loss_model, optimizer, params: list, batch: dict, spec: StepSpec, fake: bool) -> dict:
    """Forward, backward, clipping and the update under the tracker; the bytes live at the peak by kind."""
    import torch
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}.get(spec.autocast)  # fp16: the same bytes
    B, S = spec.batch_size, spec.seq_len
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None)
    tracker = _tracker()
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
    return next(iter(tracker.get_tracker_snapshot("peak").values()), {})


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
            self._ref_class = [*_MemRefType, LOSS]
            self.in_loss = False

        def _track(self, reftype, t):
            if self.in_loss and reftype in (_MemRefType.ACT, _MemRefType.TEMP):
                reftype = LOSS
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

    return StepTracker()


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


def _quantised_linears(model) -> list:
    """The linear layers a bitsandbytes quantisation replaces: every nn.Linear but the output head."""
    from torch import nn
    head = model.get_output_embeddings()
    return [m for m in model.modules() if type(m) is nn.Linear and m is not head]
