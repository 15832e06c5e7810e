"""This process's place in a training run: its device, and the process group when `torchrun` / `accelerate
launch` started several. One process is the common case, so every collective here is a no-op for it: the
loop calls them unconditionally and reads the same on one CPU as on eight GPUs.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None  # this process's torch.device (`model.device.resolve_device`)

    @property
    def main(self) -> bool:
        return self.rank == 0


# the collective backend of each accelerator; the host's tensors (the loop's reductions of counts and losses,
# all_gather_object) go through gloo in the same group: an NCCL-only group died at step 1 on them
DEVICE_BACKENDS = {"cuda": "nccl", "npu": "hccl"}


def init_distributed(device: str = "auto") -> Dist:
    """This process's device (`train.device`), and the process group when launched by torchrun/accelerate
    (WORLD_SIZE > 1): `cpu:gloo,cuda:nccl` on GPUs, so that both host and device tensors can be reduced."""
    import torch
    import torch.distributed as td

    from tunelab.model.device import resolve_device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local, field="train.device")
    if dev.type in ("cuda", "npu"):
        getattr(torch, dev.type).set_device(dev)
    if world <= 1:
        return Dist(device=dev)
    if not td.is_initialized():
        td.init_process_group("gloo" if dev.type == "cpu" else
                              f"cpu:gloo,{dev.type}:{DEVICE_BACKENDS.get(dev.type, 'gloo')}")
        atexit.register(_destroy_process_group)
    return Dist(td.get_rank(), td.get_world_size(), local, dev)


def _destroy_process_group() -> None:
    """Tear the group down before the interpreter does: left to it, gloo's threads were once still running as the
    process exited, and a finished two-process run died with SIGABRT ("terminate called without an active
    exception") after its last step. torch asks for this call at the end of every distributed program."""
    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td
        td.barrier()


def all_sum(dist: Dist, values: list[float]) -> list[float]:
    """`values` summed over every process (a collective: every rank calls it); one process gets them back."""
    if dist.world == 1:
        return values
    import torch
    import torch.distributed as td
    t = torch.tensor(values, dtype=torch.float64)
    td.all_reduce(t)
    return t.tolist()


def all_sum_tensor(dist: Dist, tensor):
    """`tensor` summed over every process on the device, in place, without the host reading it."""
    if dist.world == 1:
        return tensor
    import torch.distributed as td
    td.all_reduce(tensor)
    return tensor


def data_parallel(loss_model, dist: Dist, fsdp: bool):
    """What the loop calls forward on: the model under DDP when several processes replicate it, else itself
    (one process, or FSDP, whose sharding already wraps its layers)."""
    if dist.world == 1 or fsdp:
        return loss_model
    from torch.nn.parallel import DistributedDataParallel as DDP
    device = dist.device
    return DDP(loss_model, device_ids=[device.index] if device.type in DEVICE_BACKENDS else None)
