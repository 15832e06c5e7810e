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
