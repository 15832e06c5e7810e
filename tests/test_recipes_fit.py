"""Every shipped GPU recipe fits the card its header names, by `tunelab plan` (one traced training step of the
recipe itself; `tests/test_memory_plan.py` checks the estimator against torchtune's published peaks). A change
to a recipe or to the training code that makes one stop fitting fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.recipe import load_recipe
from tunelab.train.plan.estimate import plan_memory

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GIB = 2 ** 30
# recipe, overrides, card (GiB), devices
FITS = [
    ("llama3-8b-math-lora", [], 24, 1),                                   # one 24 GB card
    ("llama3-8b-math-lora", ["train.gradient_checkpointing=false"], 80, 1),  # one 80 GB card, faster
    ("llama3-8b-math-lora", ["train.grad_accum=1"], 80, 8),               # eight 80 GB cards (the header's command)
    ("gemma-2b-glue-lora", [], 24, 1),                                    # an A10
    ("minigpt-pretrain", [], 12, 1),                                      # a 12 GB gaming card
    # its base is runs/minigpt-pretrain, which does not exist before that run: planned from minigpt-pretrain.yaml
    ("minigpt-sft", [], 24, 1),
]


@pytest.mark.parametrize("name, overrides, card, devices", FITS, ids=[f"{f[0]}-{f[2]}GiBx{f[3]}" for f in FITS])
def test_shipped_recipe_fits_its_card(name, overrides, card, devices, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh working directory: no run of the course has been made yet
    recipe = load_recipe(RECIPES / f"{name}.yaml", overrides, check_data=False)
    plan = plan_memory(recipe, card * GIB, devices, recipe_file=RECIPES / f"{name}.yaml")
    assert plan.fits, f"{name} needs {plan.total / GIB:.1f} GiB a device, over the {card} GiB card"


def test_a_run_that_cannot_fit_its_gpu_is_refused_before_loading(monkeypatch):
    """`tunelab run` on a (mocked) 24 GB card: the Llama-3-8B recipe without activation checkpointing (28.4 GiB)
    is refused with what would fit; with it, the estimate is printed and the run may start."""
    from types import SimpleNamespace

    import torch

    from tunelab.train.plan.advice import check_fits
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(total_memory=24 * GIB, name="NVIDIA GeForce RTX 4090"))
    gpu = torch.device("cuda", 0)
    unfit = load_recipe(RECIPES / "llama3-8b-math-lora.yaml", ["train.gradient_checkpointing=false"],
                        check_data=False)
    plan, why = check_fits(unfit, gpu, 1)
    assert not plan.fits and "NVIDIA GeForce RTX 4090 has 24.0 GiB" in why
    assert "train.gradient_checkpointing=true" in why and "train.memory_check: false" in why
    plan, why = check_fits(load_recipe(RECIPES / "llama3-8b-math-lora.yaml", check_data=False), gpu, 1)
    assert plan.fits and why is None
    assert check_fits(unfit, torch.device("cpu"), 1) == (None, None)  # a CPU run has no card to plan for
