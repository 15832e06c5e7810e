"""`tunelab.eval.resident`: one base held across an evaluation pass, adapters swapped in unmerged. What it
hands out must be the model a fresh load gives, to the bit: the base with the adapter layers switched off, and
each adapter as peft loads it on its own."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.model.loading import load_for_inference
from tunelab.eval.resident import Reloading, ResidentBase, model_source


def _adapter(base, out, seed: int, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=list(targets)))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # a fresh LoRA is B = 0, the base itself: give it something to change
    model.save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, out / f.name)
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_the_held_base_and_each_swapped_adapter_equal_a_fresh_load(tiny_base, tmp_path):
    first = _adapter(tiny_base, tmp_path / "a1", 1)
    second = _adapter(tiny_base, tmp_path / "a2", 2, targets=("q_proj", "v_proj", "down_proj"))
    ids = torch.tensor([[3, 17, 40, 41, 9, 12, 5]])
    fresh = {str(p): _logits(load_for_inference(str(p))[0], ids) for p in (tiny_base, first, second)}
    held = ResidentBase(torch.device("cpu"), "fp32")
    order = [tiny_base, first, second, tiny_base, first, first]
    for path in order:
        with held.open(path) as (model, tokenizer):
            assert torch.equal(_logits(model, ids), fresh[str(path)]), path
            assert tokenizer.eos_token
    assert held.loads == 1 and held.swaps == 3  # the second `first` in a row is the one already held
    assert not torch.equal(fresh[str(first)], fresh[str(tiny_base)])
    held.close()


def test_an_adapter_on_another_base_replaces_the_held_model(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(other)
    for f in tiny_base.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, other / f.name)
    held = ResidentBase(torch.device("cpu"), "fp32")
    for path in (_adapter(tiny_base, tmp_path / "a", 1), _adapter(other, tmp_path / "b", 2), tiny_base):
        with held.open(path):
            pass
    assert held.loads == 3


def test_a_damaged_adapter_is_one_error_and_the_held_base_survives(tiny_base, tmp_path):
    good = _adapter(tiny_base, tmp_path / "good", 1)
    bad = shutil.copytree(good, tmp_path / "bad")
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    held = ResidentBase(torch.device("cpu"), "fp32")
    with held.open(good):
        pass
    with pytest.raises(TunelabError, match="adapter_model.safetensors"):
        with held.open(bad):
            pass
    with held.open(tiny_base):
        pass
    assert held.loads == 1


def test_the_cpu_reloads_and_merges(monkeypatch):
    assert isinstance(model_source("cpu"), Reloading) and not isinstance(model_source("cpu"), ResidentBase)


def test_a_run_hands_its_trained_model_to_the_evaluation(tiny_base, tmp_path, monkeypatch):
    """`tunelab run` with a held base (as on a GPU; here forced on the CPU): the base the LoRA run trained on
    is taken over from the training, LoRA layers out and unmerged, so the evaluation of the base and of every
    checkpoint loads no model at all; the results equal a run that loads and merges each one."""
    import json

    from conftest import lora_sections, write_recipe

    from tunelab import pipeline
    from tunelab.cli import main
    held = []

    def resident(recipe):
        held.append(ResidentBase(torch.device("cpu"), "fp32"))
        return held[-1]
    tasks = [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                               "options": {"kinds": ["int_mul"], "int_digits": 2}}},
             {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True}]
    metrics = {}
    for kind in ("reloading", "resident"):
        if kind == "resident":
            monkeypatch.setattr(pipeline, "run_models", resident)
        path = write_recipe(tmp_path / kind, "handed", eval={"tasks": tasks, "max_new_tokens": 10, "baseline": True},
                            score={"formula": "stage1", "total_params": 8.03e9},
                            **lora_sections(tiny_base, max_steps=6, num_checkpoints=2, precision="fp32"))
        assert main(["run", str(path)]) == 0
        metrics[kind] = json.loads((tmp_path / kind / "runs" / "handed" / "metrics.json").read_text())
    assert held[0].loads == 0 and held[0].swaps == 2
    for name in ("base", "checkpoints"):
        assert json.dumps(metrics["resident"][name], sort_keys=True) == \
            json.dumps(metrics["reloading"][name], sort_keys=True), name
