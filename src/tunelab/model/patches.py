"""Every change tunelab makes to how transformers and peft run a model, listed in one place and gated here.

Each of these reaches past a library's public surface — a modeling module's function swapped for the length of a
block, a config's private `_attn_implementation`, a peft layer's attribute — for speed on the CPU; none changes a
result beyond float rounding. An upgrade of the library can break one quietly, so each names the versions it was
written and tested for (`Patch.versions`). On any other version it is not applied: the library's own code runs,
and one warning says which patch was left out and why. `TUNELAB_NO_PATCHES=1` leaves every one of them out (the
library's own code everywhere: slower, the same numbers within rounding, tests/test_patches.py), which is the
first thing to try when a new transformers or peft misbehaves under tunelab.

Where each is applied: `rotary` in `kernels/rotary.fast_rotary`, `cpu_attention` in
`kernels/attention.use_cpu_attention`, `tree_attention` in `decoding/batch.tree_prefill_ok`, `lora_dropout` in
`train/dropout.use_fast_lora_dropout`, `lora_input_cast` in `model/lora.skip_lora_input_casts`.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "TUNELAB_NO_PATCHES"


@dataclass(frozen=True)
class Patch:
    """`name`: what `active` is asked; `library` and `versions` (a PEP 440 specifier): what it was written for;
    `what` it changes and `instead`: what runs where it is left out."""

    name: str
    library: str
    versions: str
    what: str
    instead: str


PATCHES = {p.name: p for p in (
    Patch("rotary", "transformers", ">=5.0,<6",
          "the modeling module's `apply_rotary_pos_emb` swapped, while tunelab runs the model, for one without "
          "`rotate_half`'s copies, where a check on random tensors finds it bit for bit the same",
          "transformers' own function"),
    Patch("cpu_attention", "transformers", ">=5.0,<6",
          "the attention `tunelab_cpu` registered and set as the model's implementation for training on the CPU "
          "(packed rows' masks, rows laid end to end)",
          "the model's own SDPA, on padded packed rows"),
    Patch("tree_attention", "transformers", ">=5.0,<6",
          "the attention `tunelab_tree` set in the config while a prefix-tree prefill runs (shared prefixes "
          "prefilled once)",
          "a left-padded prefill"),
    Patch("lora_dropout", "peft", ">=0.17,<1",
          "peft's LoRA `nn.Dropout` modules swapped for `FastDropout` (a cheaper CPU mask, same distribution)",
          "peft's `nn.Dropout`"),
    Patch("lora_input_cast", "peft", ">=0.17,<1",
          "peft's `cast_input_dtype_enabled` switched off under bf16 autocast (no fp32 copy of each LoRA input)",
          "peft's casts"),
)}


def disabled_by_env() -> bool:
    """Whether `TUNELAB_NO_PATCHES` asks for none of them (any value but empty, 0, false, no)."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def active(name: str) -> bool:
    """Whether patch `name` applies in this process: not switched off by `TUNELAB_NO_PATCHES`, and the installed
    library is one of the versions it was written for (else a warning, once, and the library's own code)."""
    if disabled_by_env():
        return False
    return _version_fits(name)


@functools.cache
def _version_fits(name: str) -> bool:
    from packaging.specifiers import SpecifierSet
    patch = PATCHES[name]
    installed = library_version(patch.library)
    if installed is None:  # nothing of it runs
        return False
    if installed in SpecifierSet(patch.versions, prereleases=True):
        return True
    log.warning("tunelab patch %r left out: written for %s %s, %s is installed; %s runs instead", name,
                patch.library, patch.versions, installed, patch.instead)
    return False


def library_version(library: str) -> str | None:
    """The installed version of `library`, or None when it is not installed (then nothing of it is patched)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(library)
    except PackageNotFoundError:
        return None
