"""Training steps wait on the device once a metrics line: the losses and gradient norms of the steps since the last
line are read together, what the guard checks before the loop writes anything. The losses' metrics (DPO's rewards,
GRPO's clip ratios) stay on the device until a metrics line, and the positions a loss gathers are found on the host
where the batch is built. Counted with a hook on every way a tensor's value reaches the host (`item`, `tolist`,
`float`, `int`, `bool`) and on the two that make the device report a size (a boolean mask, `nonzero`), inside the
steps and their reads alone, for SFT on packed rows and for DPO. (A hook, not a device: this CPU has none; the same
calls are what wait on a GPU.)"""

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
    """The reads of each step: its `train_step` and the `read_steps` after it, before the next step (the loop
    around them — the metrics lines, checkpoints — not counted)."""
    from tunelab.recipe import load_recipe
    from tunelab.train import step as step_module
    from tunelab.train.loop import train
    per_step: list[int] = []
    where: dict = {}
    real_step, real_read = step_module.train_step, step_module.read_steps

    def counted(real, new_step):
        def call(*args, **kwargs):
            with counted_reads() as counts:
                out = real(*args, **kwargs)
            if new_step:
                per_step.append(0)
            per_step[-1] += sum(counts.values())
            for w, n in counts.items():
                where[w] = where.get(w, 0) + n
            return out
        return call
    import tunelab.train.loop as loop
    import tunelab.train.metrics_log as metrics_log
    for module in (step_module, loop, metrics_log):
        monkeypatch.setattr(module, "train_step", counted(real_step, True), raising=False)
        monkeypatch.setattr(module, "read_steps", counted(real_read, False), raising=False)
    train(load_recipe(recipe_path))
    return per_step, where


def test_sft_steps_read_the_device_once_a_metrics_line(make_recipe, monkeypatch):
    path = make_recipe("sft", data={"train": [{"generate": "arithmetic", "count": 96, "seed": 1}]},
                       train={"max_steps": 6, "batch_size": 2, "grad_accum": 3, "log_every": 3, "num_checkpoints": 1})
    per_step, where = _steps_reads(path, monkeypatch)
    assert per_step == [0, 0, 1, 0, 0, 1], where  # the two steps before a line are read with it, in one copy
    assert len(where) == 1 and next(iter(where)).startswith(STEP), where


def test_a_bad_step_between_reads_is_named_and_never_checkpointed(make_recipe, monkeypatch):
    """Read only at the metrics lines and checkpoints, a NaN loss at step 5 is found at step 6's read: the error
    names step 5 and the checkpoint before it, and no checkpoint holds the weights it broke."""
    from safetensors.torch import load_file

    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    from tunelab.runs import list_checkpoints
    from tunelab.train import loop
    recipe = load_recipe(make_recipe("late-nan", train={"max_steps": 12, "log_every": 3, "num_checkpoints": 3}))
    real = loop.build_model_and_tokenizer
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        model, tok = real(*args, **kwargs)

        def hook(module, inputs, output):
            calls["n"] += torch.is_grad_enabled()
            return output * float("nan") if calls["n"] >= 5 and torch.is_grad_enabled() else output
        model.lm_head.register_forward_hook(hook)
        return model, tok
    monkeypatch.setattr(loop, "build_model_and_tokenizer", poisoned)
    with pytest.raises(TunelabError) as e:
        loop.train(recipe)
    assert "loss became nan at step 5" in str(e.value) and "step-000004" in str(e.value), e.value
    assert calls["n"] == 6  # found at step 6's read: one step ran on broken weights, none after
    ckpts = list_checkpoints(recipe.run_dir)
    assert [c.name for c in ckpts] == ["step-000004"]
    assert all(torch.isfinite(w).all() for w in load_file(ckpts[0] / "model" / "model.safetensors").values())


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
    assert len(where) == 1 and next(iter(where)).startswith(STEP) and sum(where.values()) == 3, where  # one a step
    # transformers' SDPA path asks whether a 2-D padding mask pads anything (twice a forward, the policy's and the
    # reference's): the loss hands it the 4-D causal mask instead (`dpo_loss.causal_mask`), so nothing else waits
