"""Model FLOPs utilisation: the share of the device's matmul peak that training turns into model arithmetic.

MFU = flops per token × tokens per second / peak. Flops per token follow nanoGPT's `estimate_mfu` (after
the PaLM paper, appendix B): 6·N + 12·L·d·T, where N is the parameters that take part in matmuls (the input
embedding is a lookup, so it counts only when tied to the output head), L layers, d the hidden size and T
the row length (data.max_seq_len) — 2 flops per weight forward, 4 backward, plus attention's scores and
weighted sum. LoRA runs compute no gradient for frozen weights, only through them: 4 flops each instead
of 6. Tokens are real tokens (padding is not useful work). The peak is the recipe's `train.peak_tflops`,
or the fastest of the square matmuls at the training precision run for ~0.3 s at start — what this device
reaches under the same thread setting, rather than a datasheet number — or the best such figure an earlier
run measured on this machine, when higher (`measure_peak_tflops`).
"""

from __future__ import annotations

import functools
import math
import time


def matmul_weights(model) -> list:
    """The weights that take part in matmuls, of a causal LM or its peft wrapper: every parameter but the input
    embedding, which is a lookup and counts only when tied to the output head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    return [p for p in model.parameters() if p is not embedding or tied]


def flops_per_token(model, seq_len: int, head_share: float = 1.0) -> float:
    """6·N (4·N for frozen weights) + 12·L·d·T for `model` (a causal LM, or its peft wrapper).

    The output head counts at `head_share` of the tokens: a loop that computes logits only where a label is (an
    answer of 18 tokens in a 68-token SFT sample: 0.27) does no more model work than that, and counting the rest
    would reward a loop that wastes it. `seq_len` 0 leaves attention's scores out (a few per cent at short rows)."""
    from tunelab.model.lora import parameter_count  # a 4-bit weight's numel() is half its count
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    head = head.weight if head is not None else None
    dense = sum((6 if p.requires_grad else 4) * parameter_count(p) * (head_share if p is head else 1.0)
                for p in matmul_weights(model))
    cfg = base.config.get_text_config()
    return float(dense + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len)


@functools.cache
def _measured_tflops(device: str, precision: str, threads: int) -> float:
    import torch
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # 1536, not 1024: a power-of-two fp32 square ran at ~55% of the speed of larger or odd shapes here
    n = 4096 if device.startswith("cuda") else 1536
    # constant inputs: the measurement must not draw from the random generators the run is seeded with
    a = torch.full((n, n), 0.5, dtype=dtype, device=device)
    b = torch.full((n, n), 0.25, dtype=dtype, device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    a @ b
    sync()
    # the fastest single matmul: on a shared machine the average measures the neighbours as much as the device
    best, t_end, done = math.inf, time.perf_counter() + 0.3, 0
    while time.perf_counter() < t_end or done < 3:
        t = time.perf_counter()
        a @ b
        sync()
        best, done = min(best, time.perf_counter() - t), done + 1
    return 2 * n ** 3 / best / 1e12


def measure_peak_tflops(device, precision: str) -> float:
    """Matmul TFLOP/s of one process on `device` at `precision` (cached per device, precision and threads).

    A measurement taken while other work shares the cores reads low (and MFU high: one demo printed 96 %), so
    the best figure measured on this machine is kept in `~/.cache/tunelab/peak_tflops.json` (or under
    $XDG_CACHE_HOME) and used when it is higher: one quiet run fixes the reference for the later ones."""
    import torch
    threads = torch.get_num_threads()
    measured = _measured_tflops(str(device), precision, threads)
    key = f"{machine_name(str(device))}|{str(device).split(':')[0]}|{precision}|{threads}"
    return _remember_best(key, measured)


def machine_name(device: str) -> str:
    """The GPU's or the CPU's model name, as the OS reports it."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _remember_best(key: str, measured: float) -> float:
    """max(measured, the best stored under `key`); the store is best-effort (an unwritable cache is ignored)."""
    import json
    import os
    from pathlib import Path
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunelab" / "peak_tflops.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    stored = known.get(key)
    stored = float(stored) if isinstance(stored, (int, float)) else 0.0
    if measured > stored:
        known[key] = measured
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
    return max(measured, stored)


def mfu(flops_per_tok: float, tokens_per_s: float, peak_tflops: float, world: int = 1) -> float:
    """The fraction of `world` devices' peak spent on model flops."""
    return flops_per_tok * tokens_per_s / (peak_tflops * 1e12 * world)
