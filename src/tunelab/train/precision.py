"""The precision a run trains at: the recipe's, unless the hardware cannot compute it natively.

bf16 autocast pays only where the processor multiplies bf16 itself (CPUs with AVX512-BF16 or AMX, GPUs from
Ampere on). A CPU without it (an AVX2-only host, which the same cloud machine kind sometimes is) emulates
bf16: measured here, a 512² bf16 matmul ran ~60× slower than fp32, and the MiniGPT demo's steps took 25 s
instead of 0.3 s. So `train.precision: bf16` on such a CPU trains in fp32 and says so once; the decision is
a short matmul race rather than a list of CPU flags, so it holds on any processor (Apple, ARM, new x86).
"""

from __future__ import annotations

import time

SLOWER_THAN_FP32 = 3.0   # bf16 matmuls this many times slower than fp32 mean emulated bf16 (native: ≤ ~1×)


def _matmul_seconds(dtype, size: int = 256, repeats: int = 8) -> float:
    import torch
    a = b = torch.full((size, size), 0.5, dtype=dtype)  # no random numbers: the run's RNG stream stays as seeded
    a @ b  # first call: kernel selection / JIT
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


def cpu_bf16_is_native() -> bool:
    """Whether this CPU multiplies bf16 at least at about fp32 speed (best of a few 256² matmuls each)."""
    import torch
    try:
        bf16 = _matmul_seconds(torch.bfloat16)
    except RuntimeError:  # no bf16 kernels at all
        return False
    return bf16 <= SLOWER_THAN_FP32 * _matmul_seconds(torch.float32)


def training_precision(requested: str, device) -> tuple[str, str | None]:
    """(precision to train at, a note for the user when it differs from `requested`)."""
    if requested != "bf16" or device.type != "cpu" or cpu_bf16_is_native():
        return requested, None
    return "fp32", ("this CPU has no native bf16 (no AVX512-BF16 or AMX: bf16 matmuls run several times slower "
                    "than fp32 here), so training runs in fp32; set train.precision: fp32 to say so in the recipe")
