"""The low-parameter adapters peft ships (issue 55): `lora.adapter: lora | ia3 | vera | ln_tuning`. Each is counted
as peft counts it (the ratio's numerator its trainable parameters, the denominator the base's own), trains in the
loop, saves, loads back through plain peft with the same logits, and merges for export and the hand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import lora_sections, write_recipe
from tunelab.errors import TunelabError
from tunelab.model.lora import AdapterSpec, add_adapter, count_parameters
from tunelab.recipe import load_recipe
from tunelab.recipe.lora import LoraConfig
from tunelab.scoring import adapter_param_counts

TINY_BASE = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
KINDS = [AdapterSpec("lora", 4, 8, 0.0, ["q_proj", "v_proj"]), AdapterSpec("ia3"), AdapterSpec("vera", rank=32),
         AdapterSpec("ln_tuning"), AdapterSpec("ia3", targets=["k_proj", "down_proj"], feedforward=["down_proj"]),
         AdapterSpec("vera", rank=16, targets=["q_proj", "down_proj"]), AdapterSpec("ln_tuning", targets=["norm"])]


def _base():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32)  # saved in bf16: merge in fp32


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: f"{s.kind}-{s.targets}")
def test_counts_are_peft_own_and_the_base_total_is_the_denominator(spec):
    base = _base()
    base_total = sum(p.numel() for p in base.parameters())
    model = add_adapter(base, spec)
    trainable, total = count_parameters(model)
    peft_trainable, peft_all = model.get_nb_trainable_parameters()
    assert trainable == peft_trainable > 0
    assert total == base_total and peft_all == base_total + trainable  # peft adds its adapters to the total
    # `tunelab ratio` counts the same on the meta device, without weights
    target = ",".join(spec.targets) if spec.targets else None
    counts = adapter_param_counts(str(TINY_BASE), spec.rank, target, adapter=spec.kind)
    assert (counts["trainable"], counts["total"]) == (trainable, total)


def test_the_recipe_names_the_adapter_and_refuses_settings_of_another():
    assert LoraConfig().targets == ["q_proj", "v_proj", "o_proj"] and LoraConfig(adapter="ia3").targets is None
    with pytest.raises(ValueError, match="ia3 setting"):
        LoraConfig(adapter="vera", feedforward_modules=["down_proj"])
    with pytest.raises(ValueError, match="not beside ln_tuning"):
        LoraConfig(adapter="ln_tuning", trainable_tokens="auto")
    with pytest.raises(ValueError):
        LoraConfig(adapter="prefix")
    with pytest.raises(TunelabError, match="matches no module"):
        add_adapter(_base(), AdapterSpec("ia3", targets=["nothing_here"]))


@pytest.mark.parametrize("spec", KINDS[:4], ids=lambda s: s.kind)
def test_a_saved_or_live_config_gives_back_its_spec(spec):
    from tunelab.model.lora import peft_config
    live = peft_config(spec).to_dict()  # peft_type an enum here, text in adapter_config.json
    for config in (live, json.loads(json.dumps(live, default=lambda v: getattr(v, "value", list(v))))):
        again = AdapterSpec.from_saved(config)
        assert again.kind == spec.kind and peft_config(again).to_dict() == peft_config(spec).to_dict()
    with pytest.raises(TunelabError, match="a PREFIX_TUNING adapter cannot be continued"):
        AdapterSpec.from_saved({"peft_type": "PREFIX_TUNING"})


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind,settings", [("ia3", {}), ("vera", {"rank": 32}), ("ln_tuning", {})])
def test_each_adapter_trains_saves_and_loads_back_through_plain_peft(tmp_path, kind, settings):
    from peft import PeftModel

    from tunelab.runs import list_checkpoints
    from tunelab.train.loop import train
    sections = lora_sections(TINY_BASE, max_steps=6, batch_size=4, lr=3e-2, num_checkpoints=1)
    sections["lora"] = {"enabled": True, "adapter": kind, **settings}
    recipe = load_recipe(write_recipe(tmp_path, kind, **sections))
    summary = train(recipe)
    adapter = list_checkpoints(recipe.run_dir)[-1] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == {"ia3": "IA3", "vera": "VERA", "ln_tuning": "LN_TUNING"}[kind]

    base = _base()
    fresh = add_adapter(_base(), AdapterSpec.from_saved(config))
    assert summary["trainable_params"] == fresh.get_nb_trainable_parameters()[0]  # the run's ratio is peft's
    assert summary["total_params"] == sum(p.numel() for p in base.parameters())
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    before = _logits(base, ids)
    loaded = PeftModel.from_pretrained(_base(), adapter)
    after = _logits(loaded, ids)
    assert not torch.allclose(before, after, atol=1e-4)               # it trained: the adapter changes the model
    merged = PeftModel.from_pretrained(_base(), adapter).merge_and_unload()
    torch.testing.assert_close(_logits(merged, ids), after, atol=1e-4, rtol=1e-4)  # merged as it was trained
    # the run's own loading (evaluation, serving) sees the same model as plain peft
    from tunelab.model.loading import load_for_inference
    ours, _ = load_for_inference(str(adapter))
    torch.testing.assert_close(_logits(ours, ids), after, atol=1e-5, rtol=1e-5)
    if kind == "ia3":  # `tunelab export` (and so the hand-in, which exports every checkpoint) merges it
        from transformers import AutoModelForCausalLM

        from tunelab.convert.export import export
        out = export(list_checkpoints(recipe.run_dir)[-1], tmp_path / "exported", dtype="float32")
        torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out), ids), after, atol=1e-4,
                                   rtol=1e-4)


def test_the_hand_in_says_what_trained_and_gives_lora_alone_a_pet_config():
    from tunelab.handin import description, mindformers_yaml
    summary = {"trainable_params": 192, "total_params": 26784, "samples": 300, "steps": 6}
    metrics = {"ratio": {"ratio": 0.007}, "best_checkpoint": "step-000006"}
    ia3 = {"name": "r", "lora": {"enabled": True, "adapter": "ia3", "target_modules": None}}
    assert "pet_config" not in mindformers_yaml(ia3, None).get("model", {}).get("model_config", {})
    assert "- IA³ (learnt scales" in description(ia3, summary, metrics) and "merged" in description(ia3, summary,
                                                                                                    metrics)
    lora = {"name": "r", "lora": {"enabled": True, "rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}}
    pet = mindformers_yaml(lora, None)["model"]["model_config"]["pet_config"]
    assert pet["pet_type"] == "lora" and pet["target_modules"] == ".*wq|.*wv|.*wo"  # LoRA's default targets


def test_cli_ratio_counts_each_adapter(capsys):
    from tunelab.cli import main
    assert main(["ratio", "--model", str(TINY_BASE), "--adapter", "ia3", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    model = add_adapter(_base(), AdapterSpec("ia3"))
    assert counts["trainable"] == model.get_nb_trainable_parameters()[0] and counts["adapter"] == "ia3"
    assert main(["ratio", "--model", str(TINY_BASE), "--adapter", "vera"]) == 2
    assert "--lora-rank is required" in capsys.readouterr().err


def test_the_cli_takes_the_recipe_adapter_kinds(capsys):
    # `tunelab ratio --adapter` checks the recipe's one list when it runs
    from tunelab.cli import main
    from tunelab.model.lora import PEFT_TYPES
    from tunelab.recipe.lora import ADAPTERS
    assert tuple(PEFT_TYPES) == ADAPTERS
    assert main(["ratio", "--model", str(TINY_BASE), "--adapter", "loha", "--lora-rank", "4"]) == 2
    err = capsys.readouterr().err
    assert "--adapter" in err and all(kind in err for kind in ADAPTERS)
    from peft import PeftType
    assert set(PEFT_TYPES.values()) <= {kind.value for kind in PeftType}  # each is a peft type of this peft
