"""The optimizer a run steps with (`train.optimizer`): torch's AdamW, or bitsandbytes' 8-bit AdamW.

Why 8-bit: AdamW keeps two fp32 moments per trained weight, 8 bytes a parameter. A full fine-tune of an 8B
model needs 64 GB for them alone; even LoRA's moments add up on a tight GPU. bitsandbytes' 8-bit AdamW
(Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization") stores both moments blockwise-quantised
(2 bytes a parameter, plus a small absmax per block of 256) and dequantises them for each update, with a
loss curve that follows 32-bit AdamW. Tensors under 4,096 elements (bitsandbytes' `min_8bit_size`: norms, biases,
small LoRA factors) keep fp32 moments: quantising them would save nothing worth the error.

`paged_adamw_8bit` also puts the moments in CUDA unified memory, which the driver pages out to host RAM when the
GPU runs short (a long sequence's activation spike) instead of failing with out-of-memory. On a CPU there is
nothing to page to: bitsandbytes 0.50 then keeps ordinary buffers and warns at the first step ("Paged
optimizers are not supported on CPU"), with updates bit for bit those of `adamw_8bit` (tests/test_qlora.py). tunelab
builds `adamw_8bit` there itself and says so once in the log, before training starts.

All three keep their whole state in `state_dict()` (bitsandbytes nests its quantised buffers under
`__bnb_optimizer_quant_state__`), and `load_state_dict()` of it continues the run bit for bit: what --resume
relies on.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")


def build_optimizer(param_groups: list[dict], name: str = "adamw", lr: float = 1e-3,
                    betas: tuple[float, float] = (0.9, 0.999), fused: bool = False):
    """The optimizer `name` over `param_groups` (torch's format: each a dict with "params" and its own settings,
    such as weight_decay). `fused`: torch AdamW's single-kernel update (see the training loop); bitsandbytes'
    optimizers run their own kernels and ignore it."""
    import torch
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=fused or None)
    if name not in OPTIMIZERS:
        from tunelab.errors import TunelabError
        raise TunelabError(f"unknown optimizer '{name}' (expected {', '.join(OPTIMIZERS)})", field="train.optimizer")
    from tunelab.model.quantization import require_bitsandbytes
    bnb = require_bitsandbytes(f"train.optimizer: {name}", "train.optimizer")
    if name == "paged_adamw_8bit":
        if any(p.device.type == "cuda" for group in param_groups for p in group["params"]):
            return bnb.optim.PagedAdamW8bit(param_groups, lr=lr, betas=betas)
        log.warning("train.optimizer: paged_adamw_8bit pages optimizer state out of GPU memory; with no CUDA "
                    "parameters there is nothing to page, so this run uses adamw_8bit (the same update)")
    return bnb.optim.AdamW8bit(param_groups, lr=lr, betas=betas)
