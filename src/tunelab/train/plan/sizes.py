"""Memory sizes as people write them ('24GiB', '80G') and as the plan prints them (GiB)."""

from __future__ import annotations

import re

from tunelab.errors import TunelabError

GiB = 2 ** 30

_UNITS = {"": GiB, "k": 2 ** 10, "m": 2 ** 20, "g": GiB, "t": 2 ** 40}


def parse_memory_size(text: str, field: str = "gpu_memory") -> int:
    """'24GiB', '24GB', '80G', '24' (GiB), '16384MiB' -> bytes. GB and GiB are both 2**30 bytes: a "24 GB" card
    holds 24 GiB (an RTX 4090 reports 24,564 MiB), as nvidia-smi counts."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise TunelabError(f"expected a memory size such as 24GiB, 24GB, 80G or 16384MiB, got {text!r}", field=field)
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def gib(n: float) -> float:
    return n / GiB
