"""Where a model runs and in what precision: one policy for train, eval, predict, generate, serve and the UI.

`device`: `auto | cpu | cuda | cuda:N | mps | npu | npu:N`. `auto` is this process's GPU (`cuda:LOCAL_RANK`
under torchrun), else an Ascend NPU when `torch_npu` is installed, else Apple's MPS, else the CPU. Asking for
a device this machine does not have is an error, not a silent CPU run.

`precision`: `auto | bf16 | fp16 | fp32`, what the matmuls run in (weights of a LoRA run's adapters stay fp32).
- bf16 only where the device does it natively. On CUDA that is compute capability 8.0 and newer (Ampere on);
  a T4 or V100 "supports" bf16 by emulation (`torch.cuda.is_bf16_supported()` says yes there unless asked
  `including_emulation=False`) and runs it slowly, so there `auto` — and an explicit bf16, with a note — train
  in fp16 with `torch.amp.GradScaler`, which keeps small gradients from flushing to zero.
- On a CPU, `auto` and `bf16` race fp32 against bf16 matmuls as wide as the model (`cpu_matmul_race`): bf16
  autocast only where it is clearly faster, the two measured speeds said either way. `TUNELAB_CPU_AUTO_PRECISION=fp32`
  keeps `auto` at fp32 with no race, for the same numbers on every host (the test suite sets it). fp16 autocast
  has no fast CPU kernels and is refused with a note (fp32).
- fp32 on CUDA runs its matmuls in TF32 (10-bit mantissa products, fp32 sums), ~8× faster on Ampere and later,
  as PyTorch Lightning and HF Trainer's `tf32=True` do.
For inference (eval, serve, generate) `auto` is bf16 where native, fp16 on older GPUs, fp32 on a CPU.

Why the CPU race: the hosts of one cloud machine kind differ (2 threads, matmuls of 256² to 2048², measured):
AMX (Sapphire Rapids) bf16 ~4.4× fp32; AVX512-BF16 on AMD EPYC ~3×; AVX512-BF16 on an Intel Xeon without AMX
**0.5×** (AVX-512 fp32 FMAs beat its bf16 dot products); AVX2 only: emulated, ~1/60 of fp32 (the MiniGPT demo's
steps took 25 s instead of 0.3 s). A short matmul race rather than a list of CPU flags holds on any processor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tunelab.errors import TunelabError

DEVICE_HELP = "auto (default), cpu, cuda, cuda:N, mps, npu, npu:N"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def npu_available() -> bool:
    """An Ascend NPU through `torch_npu` (importing it registers the `npu` device with torch)."""
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    import torch
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def resolve_device(spec: str | None = "auto", local_rank: int | None = None, field: str = "device"):
    """The torch.device for `spec` on this machine; `local_rank` picks this process's GPU under torchrun."""
    import torch
    spec = (spec or "auto").strip().lower()
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        if npu_available():
            return torch.device("npu", rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda", "mps", "npu") or (index and not index.isdigit()) or (kind in ("cpu", "mps")
                                                                                        and index):
        raise TunelabError(f"unknown device '{spec}' (expected {DEVICE_HELP})", field=field)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
            raise TunelabError(f"device '{spec}' asked for, but no CUDA GPU is visible (torch {torch.__version__} "
                               f"with {build}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                               field=field)
        n = torch.cuda.device_count()
        i = int(index) if index else rank % n
        if i >= n:
            raise TunelabError(f"device '{spec}': this machine has {n} CUDA GPU{'s' if n > 1 else ''} "
                               f"(cuda:0 to cuda:{n - 1})", field=field)
        return torch.device("cuda", i)
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise TunelabError("device 'mps' asked for, but Apple's MPS is not available here", field=field)
        return torch.device("mps")
    if not npu_available():
        raise TunelabError(f"device '{spec}' asked for: Ascend NPUs need torch_npu installed (pip install torch-npu "
                           "matching your torch and CANN) and a visible NPU", field=field)
    return torch.device("npu", int(index) if index else rank)


def native_bf16(device) -> bool:
    """Whether `device` multiplies bf16 in hardware (not by emulation)."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0) and \
            torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "npu"


@dataclass(frozen=True)
class Precision:
    """How a training step runs: `name` (bf16, fp16, fp32), the autocast dtype (None: no autocast), whether a
    GradScaler scales the loss (fp16), and a note for the user when it is not what the recipe asked for."""

    name: str
    grad_scaler: bool = False
    note: str | None = None

    @property
    def autocast_dtype(self):
        import torch
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)


# CPU bf16: autocast also casts weights and activations every step: bf16 matmuls must be clearly faster to pay for that
MIN_SPEEDUP = 1.25
RACE_WIDTH = 256          # the race's matmul width when the model's is not known
MAX_RACE_WIDTH = 768      # wider models race at this width: on an AVX2-only host an emulated bf16 1024² product takes ~3 s
AUTO_CPU_ENV = "TUNELAB_CPU_AUTO_PRECISION"   # "fp32": `auto` trains in fp32 on any CPU, with no race


def training_precision(requested: str, device, width: int = RACE_WIDTH) -> Precision:
    """The precision to train at on `device` for the recipe's `requested` (module docstring); `width`: the model's
    hidden size, the width the CPU race multiplies at."""
    if requested not in PRECISIONS:
        raise TunelabError(f"unknown precision '{requested}' (expected {', '.join(PRECISIONS)})",
                           field="train.precision")
    if device.type == "cpu":
        return _cpu_training_precision(requested, width)
    if device.type == "mps":
        return Precision("fp32", note=None if requested in ("auto", "fp32") else
                         "mixed precision on Apple's MPS is not used by tunelab yet: training runs in fp32")
    if requested == "fp32":
        enable_tf32(device)
        return Precision("fp32")
    if requested == "fp16":
        return Precision("fp16", grad_scaler=device.type == "cuda")
    if native_bf16(device):
        return Precision("bf16")
    return Precision("fp16", grad_scaler=True, note=None if requested == "auto" else
                     f"{device_name(device)} has no native bf16 (compute capability below 8.0: it would be emulated, "
                     "slowly), so training runs in fp16 with a gradient scaler; set train.precision: fp16 to say so")


def _cpu_training_precision(requested: str, width: int) -> Precision:
    """fp32, or bf16 autocast where the race at the model's width says it pays; the race's two speeds are said."""
    if requested == "fp32" or (requested == "auto" and os.environ.get(AUTO_CPU_ENV) == "fp32"):
        return Precision("fp32")
    if requested == "fp16":
        return Precision("fp32", note="fp16 autocast has no fast kernels on a CPU, so training runs in fp32; "
                                      "set train.precision: fp32 to say so in the recipe")
    race = cpu_matmul_race(width)
    if cpu_bf16_pays(race.speedup):
        return Precision("bf16", note=f"precision: bf16 autocast, as {race.text()} ({race.speedup:.2g}x)")
    if requested == "auto":
        return Precision("fp32", note=f"precision: fp32, as {race.text()} (bf16 autocast pays from "
                                      f"{MIN_SPEEDUP}x)")
    return Precision("fp32", note=f"bf16 matmuls run at {race.speedup:.2g}x the speed of fp32 on this CPU ("
                                  f"{race.text()}; bf16 autocast pays from {MIN_SPEEDUP}x), so training runs in fp32; "
                                  "set train.precision: fp32 to say so in the recipe")


@dataclass(frozen=True)
class MatmulRace:
    """The CPU race's result: GFLOP/s of a `width`² matmul in fp32 and in bf16 (0: no bf16 kernels)."""

    width: int
    fp32: float
    bf16: float

    @property
    def speedup(self) -> float:
        return self.bf16 / self.fp32 if self.fp32 else 0.0

    def text(self) -> str:
        return (f"this CPU multiplies {self.width}-wide matrices at {self.bf16:,.1f} GFLOP/s in bf16 and "
                f"{self.fp32:,.1f} in fp32")


def _race_seconds(size: int, rounds: int = 3) -> tuple[float, float | None]:
    """The best seconds of a `size`² product in fp32 and in bf16 (None: no bf16 kernels), taken in alternation
    (three fp32 products, one bf16, `rounds` times) so that a neighbour's load hits both alike: with two threads
    and one core taken, a short fp32 product waits for its second thread far more, relatively, than a long
    emulated bf16 one, which measured in one block bent a 0.015x race to 0.55x here."""
    import torch
    a32 = torch.full((size, size), 0.5)  # no random numbers: the run's RNG stream stays as seeded
    a16 = a32.to(torch.bfloat16)
    a32 @ a32  # first calls: kernel selection / JIT
    try:
        a16 @ a16
    except RuntimeError:  # no bf16 kernels at all
        a16 = None
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(rounds):
        for a in (a32, a32, a32) + ((a16,) if a16 is not None else ()):
            t = time.perf_counter()
            a @ a
            best[a.dtype] = min(best[a.dtype], time.perf_counter() - t)
    return best[torch.float32], (best[torch.bfloat16] if a16 is not None else None)


def matmul_speeds(size: int, rounds: int = 3) -> MatmulRace:
    """GFLOP/s of a `size`² product in fp32 and in bf16 on this CPU at the current thread count, the best of
    `rounds` alternations (`_race_seconds`). The benchmarks' matmul ceiling is this, at the model's exact width."""
    flop = 2 * size ** 3 / 1e9
    fp32, bf16 = _race_seconds(size, rounds)
    return MatmulRace(size, flop / fp32, flop / bf16 if bf16 else 0.0)


def cpu_matmul_race(width: int = RACE_WIDTH) -> MatmulRace:
    """fp32 against bf16 at the model's width (rounded to 64, between 256 and 768) on this CPU at the current
    thread count (`matmul_speeds`). An emulated bf16 product of 576² (SmolLM2) takes ~0.1 s on an AVX2-only
    host, so the race costs under a second there and milliseconds where bf16 is native."""
    return matmul_speeds(min(MAX_RACE_WIDTH, max(RACE_WIDTH, round(width / 64) * 64)))


def cpu_bf16_pays(speedup: float) -> bool:
    """Whether bf16 autocast makes training faster on a CPU whose bf16 matmuls run `speedup` times as fast as fp32
    (`cpu_matmul_race(width).speedup`)."""
    return speedup >= MIN_SPEEDUP


def inference_dtype(requested: str | None, device) -> str:
    """The dtype name to load a model in for inference on `device` (module docstring)."""
    requested = requested or "auto"
    if requested in _DTYPE_NAMES.values():  # float32 / bfloat16 / float16, as the older --dtype flags say
        return requested
    if requested not in PRECISIONS:
        raise TunelabError(f"unknown precision '{requested}' (expected {', '.join(PRECISIONS)})", field="precision")
    if requested != "auto":
        return _DTYPE_NAMES[requested]
    if device.type in ("cpu", "mps"):
        return "float32"
    return "bfloat16" if native_bf16(device) else "float16"


def enable_tf32(device) -> None:
    """TF32 matmuls for fp32 work on CUDA (module docstring); nothing elsewhere."""
    if device.type == "cuda":
        import torch
        torch.set_float32_matmul_precision("high")


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)
