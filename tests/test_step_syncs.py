"""A training step waits on the device once: the loss and the gradient norm read together, what the guard needs
before the weights change. The losses' metrics (DPO's rewards, GRPO's clip ratios) stay on the device until a
metrics line, and the positions a loss gathers are found on the host where the batch is built. Counted with a
hook on every way a tensor's value reaches the host (`item`, `tolist`, `float`, `int`, `bool`) and on the two
that make the device report a size (a boolean mask, `nonzero`), inside the step alone, for SFT on packed rows
and for DPO. (A hook, not a device: this CPU has none; the same calls are what wait on a GPU.)"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

STEP = __import__("tunelab.train.step", fromlist=["x"]).__file__
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def counted_reads():
    """Every read of a tensor's value by the host while the block runs, by where it was read. Left out: torch's
    optimizers reading their step counters, which torch keeps on the host for a non-capturable optimizer
    whatever the device of the weights (no wait on a GPU)."""
    counts: dict[str, int] = {}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        real = saved[name]

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
            if f"{os.sep}torch{os.sep}optim{os.sep}" not in where:
                counts[where] = counts.get(where, 0) + 1
            return real(self, *args, **kwargs)
        return read
    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    real_getitem, real_nonzero = torch.Tensor.__getitem__, torch.Tensor.nonzero

    def getitem(self, index):  # a boolean mask's result has a size only the device knows
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.ndim for i in parts):
            caller = sys._getframe(1)
            where = f"{caller.f_code.co_filename}:{caller.f_lineno} (boolean mask)"
            counts[where] = counts.get(where, 0) + 1
        return real_getitem(self, index)

    def nonzero(self, *args, **kwargs):
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno} (nonzero)"
        counts[where] = counts.get(where, 0) + 1
        return real_nonzero(self, *args, **kwargs)
    torch.Tensor.__getitem__, torch.Tensor.nonzero = getitem, nonzero
    try:
        yield counts
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)
        torch.Tensor.__getitem__, torch.Tensor.nonzero = real_getitem, real_nonzero


def _steps_reads(recipe_path, monkeypatch) -> tuple[list[int], dict]:
    """The reads of each step's `train_step` (the loop around it — logging, checkpoints — not counted)."""
    from tunelab.recipe import load_recipe
    from tunelab.train import step as step_module
    from tunelab.train.loop import train
    per_step: list[int] = []
    where: dict = {}
    real = step_module.train_step

    def counted(*args, **kwargs):
        with counted_reads() as counts:
            out = real(*args, **kwargs)
        per_step.append(sum(counts.values()))
        for w, n in counts.items():
            where[w] = where.get(w, 0) + n
        return out
    monkeypatch.setattr(step_module, "train_step", counted)
    import tunelab.train.loop as loop
    monkeypatch.setattr(loop, "train_step", counted, raising=False)
    train(load_recipe(recipe_path))
    return per_step, where


def test_an_sft_step_reads_the_device_once(make_recipe, monkeypatch):
    path = make_recipe("sft", data={"train": [{"generate": "arithmetic", "count": 96, "seed": 1}]},
                       train={"max_steps": 4, "batch_size": 2, "grad_accum": 3, "log_every": 2, "num_checkpoints": 1})
    per_step, where = _steps_reads(path, monkeypatch)
    assert per_step == [1, 1, 1, 1], where


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_a_dpo_step_reads_the_device_once(make_recipe, monkeypatch, tmp_path, tiny_base, loss):
    import json
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": str(2 * i),
                                         "rejected": str(2 * i + 1)}) + "\n" for i in range(24)), encoding="utf-8")
    path = make_recipe("dpo", data={"train": [{"path": str(pairs)}]},
                       model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                              "path": str(tiny_base)},
                       lora={"enabled": True, "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                       train={"method": "dpo", "max_steps": 3, "batch_size": 2, "grad_accum": 2, "log_every": 1,
                              "num_checkpoints": 1, "preference": {"loss": loss}})
    per_step, where = _steps_reads(path, monkeypatch)
    ours = {w: n for w, n in where.items() if f"{os.sep}tunelab{os.sep}" in w}
    assert len(ours) == 1 and next(iter(ours)).startswith(STEP) and sum(ours.values()) == 3, where  # one a step
    # what is left is transformers' own: its SDPA path asks whether a 2-D padding mask pads anything (twice a
    # forward, the policy's and the reference's); a mask built on the host, as the decoding core passes one, is the
    # way to remove it
    assert all("transformers" in w and "masking_utils" in w for w in where if w not in ours), where
