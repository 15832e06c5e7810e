"""The precision a run trains at: the recipe's, unless bf16 would make this CPU slower.

On a CPU, bf16 autocast is worth it only where the processor multiplies bf16 faster than fp32, and the hosts
of one cloud machine kind differ (2 threads, matmuls of 256² to 2048², measured here):
- AMX (Sapphire Rapids): bf16 ~4.4× fp32;
- AVX512-BF16 on AMD EPYC: ~3×;
- AVX512-BF16 on an Intel Xeon without AMX: **0.5×** (AVX-512 fp32 FMAs beat its bf16 dot products);
- AVX2 only: bf16 is emulated, ~1/60 of fp32 (the MiniGPT demo's steps took 25 s instead of 0.3 s).
So `train.precision: bf16` on a CPU trains in fp32, and says so once, unless a bf16 matmul is at least
`MIN_SPEEDUP` times as fast as an fp32 one; the decision is a short matmul race rather than a list of CPU
flags, so it holds on any processor (Apple, ARM, new x86). GPUs keep the recipe's precision.
"""

from __future__ import annotations

import time

# autocast also casts weights and activations every step: bf16 matmuls must be clearly faster to pay for that
MIN_SPEEDUP = 1.25


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


def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies bf16 than fp32 at the current thread count (best of a few
    256² matmuls each: the ratio is the same as at 2048² on the hosts above, and an emulated bf16 matmul of
    that size still takes only ~30 ms); 0 when torch has no bf16 kernels here."""
    import torch
    try:
        bf16 = _matmul_seconds(torch.bfloat16)
    except RuntimeError:  # no bf16 kernels at all
        return 0.0
    return _matmul_seconds(torch.float32) / bf16


def cpu_bf16_pays(speedup: float) -> bool:
    """Whether bf16 autocast makes training faster on a CPU whose `cpu_bf16_speedup()` is `speedup`."""
    return speedup >= MIN_SPEEDUP


def training_precision(requested: str, device) -> tuple[str, str | None]:
    """(precision to train at, a note for the user when it differs from `requested`)."""
    if requested != "bf16" or device.type != "cpu":
        return requested, None
    speedup = cpu_bf16_speedup()
    if cpu_bf16_pays(speedup):
        return requested, None
    return "fp32", (f"bf16 matmuls run at {speedup:.2g}x the speed of fp32 on this CPU (bf16 autocast pays from "
                    f"{MIN_SPEEDUP}x), so training runs in fp32; set train.precision: fp32 to say so in the recipe")
