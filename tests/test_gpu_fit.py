"""Fitting a run on the card: activation checkpointing gives the same training with far less held for backward.

What is measured on this CPU holds on a GPU: the recomputation, the RNG replay and the bytes autograd keeps are
the same code on either device."""

from __future__ import annotations

import pytest
import torch
from conftest import lora_sections, write_recipe

from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from test_resume_ddp import _metrics


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_activation_checkpointing_trains_exactly_as_without(kind, tmp_path, tiny_base):
    """LoRA with dropout (the recompute must draw the same masks) and a full fine-tune, fast rotary path on:
    every logged loss and gradient norm and the final weights equal the run without checkpointing.
    Before the loop held the fast rotary path over the backward pass, this raised torch's CheckpointError."""
    from tunelab.train.loop import train
    runs = {}
    for gc in (False, True):
        train_cfg = {"max_steps": 6, "num_checkpoints": 1, "log_every": 1, "gradient_checkpointing": gc}
        sections = lora_sections(tiny_base, **train_cfg) if kind == "lora" else {"train": train_cfg}
        if kind == "lora":
            assert sections["lora"]["dropout"] > 0
        recipe = load_recipe(write_recipe(tmp_path / str(gc), kind, **sections))
        train(recipe)
        runs[gc] = recipe.run_dir
    assert _metrics(runs[True]) == _metrics(runs[False])
    a, b = (torch.load(list_checkpoints(runs[gc])[-1] / "trainer_state.pt", weights_only=False)["trainable"]
            for gc in (False, True))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_keeps_a_tenth_of_the_activations(tiny_base):
    """Bytes autograd holds for the backward pass of one LoRA step (4 rows x 256 tokens on models/tiny-base's
    shape), counted as they are saved: measured 61.7 MiB without checkpointing, 6.0 MiB with it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.model.activation_checkpointing import enable_activation_checkpointing
    from tunelab.model.lora import make_lora_config
    from tunelab.model.kernels.rotary import fast_rotary
    from tunelab.train.methods.sft_loss import LabelledLoss

    def held_for_backward(checkpointing: bool) -> tuple[int, float]:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
        model = get_peft_model(model, make_lora_config(8, 16, 0.0, ["q_proj", "v_proj"]))
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(1))
        saved: dict[int, int] = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with fast_rotary(model):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = LabelledLoss(model)(input_ids=ids, labels=ids, num_items_in_batch=ids.numel())
            loss.backward()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in saved.items() if ptr not in weights), loss.item()

    (without, loss_a), (with_, loss_b) = held_for_backward(False), held_for_backward(True)
    assert loss_a == loss_b
    assert with_ < without / 5, (without, with_)


def test_the_fp16_gradient_scaler_path_trains_and_resumes_exactly(make_recipe, monkeypatch):
    """What a V100/T4 runs (fp16 autocast + GradScaler), forced on this CPU: the loss falls, the scaler's state is
    checkpointed, and a resume after a checkpoint ends equal to the unbroken run."""
    from tunelab.model import device
    from tunelab.train.loop import train
    from tunelab.train.plots import read_metrics
    monkeypatch.setattr(device, "training_precision",
                        lambda requested, dev, width=256: device.Precision("fp16", grad_scaler=True))
    recipe = load_recipe(make_recipe("fp16", train={"max_steps": 8, "num_checkpoints": 2, "log_every": 1}))
    summary = train(recipe)
    assert summary["precision"] == "fp16"
    rows = read_metrics(recipe.run_dir / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = torch.load(list_checkpoints(recipe.run_dir)[0] / "trainer_state.pt", weights_only=False)
    assert state["grad_scaler"]["scale"] > 0
    want = _metrics(recipe.run_dir)
    import shutil
    shutil.rmtree(list_checkpoints(recipe.run_dir)[-1])
    (recipe.run_dir / "train_summary.json").unlink()
    assert train(recipe, resume=True)["resumed_from"] == 4
    assert _metrics(recipe.run_dir) == want
