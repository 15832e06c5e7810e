"""Full fine-tuning past one GPU: FSDP2 (`train.strategy: fsdp`), torch's own sharding engine.

DDP keeps a whole replica of weights, gradients and AdamW states on every GPU: 16 bytes a parameter, 128 GB for
an 8B model, so a full fine-tune of it fits no single card. `fully_shard` splits each decoder layer's parameters
(and so their gradients and optimizer states) across the ranks and gathers a layer only while it computes.
- Precision: the sharded parameters stay fp32 (the master weights AdamW updates: in bf16, updates below ~1e-5 of
  a weight vanish); with `precision: bf16` they are cast to bf16 for compute (`MixedPrecisionPolicy`), and
  gradients are reduced in fp32.
- `train.cpu_offload`: parameters, gradients and optimizer states live on the host between uses.
- Checkpoints: every rank writes its own shard of the trainable weights and of the optimizer state through
  `torch.distributed.checkpoint` (`sharded/`), so no rank ever holds the whole optimizer state; the run's
  model/adapter directory beside it is the full weights, gathered to the host of rank 0 (what eval, serve and
  export load). A sharded checkpoint loads on any number of ranks: DCP reshards on load.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

SHARDED = "sharded"


def decoder_layers(model) -> list:
    """The repeated blocks to shard one by one (a transformers causal LM's `layers`, under peft too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix, None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise TunelabError(f"train.strategy fsdp: no decoder layers found in {type(base).__name__} (tunelab shards "
                           "models whose backbone has `layers`: Llama, Qwen, Gemma, Mistral …)", field="train.strategy")
    return list(layers)


def shard(root, model, device, world: int, bf16: bool, cpu_offload: bool) -> None:
    """`fully_shard` each decoder layer of `model`, then `root`, the module the loop calls (tunelab's loss
    around the model: it runs the backbone and the head's weight itself, so the head, embeddings and final norm
    are gathered by the root's hooks, around the whole loss), over all ranks."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(root, mesh=mesh, mp_policy=mp, offload_policy=offload)


def set_gradient_sync(root, sync: bool) -> None:
    """FSDP's `no_sync`: skip the reduce-scatter on all but the last micro-batch of a step."""
    root.set_requires_gradient_sync(sync)


def full_trainable_state(model) -> dict:
    """The trainable parameters, whole, on the host of every rank (a collective: every rank calls it)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def full_model_state(root, prefix: str = "model.") -> dict:
    """The model's whole state dict on the host (rank 0 gets it; a collective), named as the model inside
    `root` names it, for save_pretrained."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _trainable_only(root, state: dict) -> dict:
    trainable = {n for n, p in root.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable}


def save_sharded(ckpt: Path, root, optimizer) -> None:
    """This rank's shards of the trainable weights and the optimizer state into `ckpt/sharded/` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(root, optimizer)
    dcp.save({"model": _trainable_only(root, model_state), "optim": optim_state},
             checkpoint_id=str(ckpt / SHARDED))


def load_sharded(ckpt: Path, root, optimizer) -> None:
    """Load `ckpt/sharded/` into the model and optimizer, sharded or not, whatever the world size that wrote it
    (`root`: the module the loop calls, as when it was saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(root, optimizer)
    state = {"model": _trainable_only(root, model_state), "optim": optim_state}
    dcp.load(state, checkpoint_id=str(ckpt / SHARDED))
    set_state_dict(root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=False))
