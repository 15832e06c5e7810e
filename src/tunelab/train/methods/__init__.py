"""The training methods: what the training loop does differently when it learns answers (`sft`), preferences
(`dpo`), from rewarded samples (`grpo`) or from the samples a grader accepts (`rft`). Each method is a module of
its own that owns its rows, its loss and its metrics (`sft` + `sft_loss`; `dpo` + `dpo_rows` + `dpo_loss`; `grpo` +
`grpo_loss` + `grpo_groups`; `rft`; the two that sample share `own_samples`) and
describes itself as a `Method` (`base.py`); adding one touches this folder and the recipe's `train.method`.
The loop, its checkpoints, resume, trackers and every device path are the same for all of them."""

from __future__ import annotations

from tunelab.train.methods.base import Method
from tunelab.train.methods.dpo import DPO
from tunelab.train.methods.grpo import GRPO
from tunelab.train.methods.rft import RFT
from tunelab.train.methods.sft import SFT

METHODS: dict[str, Method] = {m.name: m for m in (SFT, DPO, GRPO, RFT)}
