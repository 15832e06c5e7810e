"""Preference tuning in tunelab's own trainer (`train.method: dpo`): a real LoRA DPO run on the tiny trained base
learns the preference, logs TRL's reward metrics, writes checkpoints whose adapter plain transformers + peft
load (and whose rewards, recomputed from those files, are the ones the run logged), resumes after kill -9 to
the same weights as a run never stopped, and refuses recipes it cannot train."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import lora_sections, sigkill_after_a_checkpoint, write_recipe

from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints


def write_pairs(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"{a} + {b} = ?", "chosen": f"{a} + {b} = {a + b}",
                     "rejected": f"{a} + {b} = {a + b + rng.choice([-10, -1, 1, 10])}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dpo_recipe(tmp_path: Path, base: Path, name: str = "dpo", **train) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    sections = lora_sections(base)
    sections["data"] = {"train": [{"path": str(write_pairs(tmp_path / "prefs.jsonl"))}], "packing": False}
    sections["train"] = {"method": "dpo", "preference": {"loss": "sigmoid", "beta": 0.5}, "lr": 2e-2,
                         "max_steps": 32, "batch_size": 4, "log_every": 4, "num_checkpoints": 3, **train}
    return write_recipe(tmp_path, name, **sections, report_to=[])


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open(encoding="utf-8")]


@pytest.fixture(scope="module")
def dpo_run(tiny_base, tmp_path_factory):
    """(recipe, summary) of `dpo_recipe` as written, trained once for the module: the run the first test inspects
    and the unbroken run the kill and validation tests compare theirs with."""
    from tunelab.train.loop import train
    recipe = load_recipe(dpo_recipe(tmp_path_factory.mktemp("dpo"), tiny_base))
    return recipe, train(recipe)


def test_a_dpo_run_learns_the_preference_and_its_adapter_loads_in_plain_peft(dpo_run, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.packing import encode_examples
    from tunelab.data.preferences import file_pairs, pair_examples
    from tunelab.data.templates import load_template
    from tunelab.train.methods.dpo_loss import collate_pairs, answer_logps
    recipe, summary = dpo_run
    assert summary["steps"] == 32
    lines = metrics_lines(recipe.run_dir)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert all(key in line for line in lines), key
    # the adapter starts at zero (policy = reference: no margin), then learns to prefer the right sums
    # (each line averages 16 pairs: the last three lines together)
    last = lines[-3:]
    assert lines[0]["rewards/margins"] == pytest.approx(0, abs=0.02)
    assert sum(x["rewards/margins"] for x in last) / 3 > 0.2 and sum(x["loss"] for x in last) / 3 < 0.6
    assert (recipe.run_dir / "rewards.png").stat().st_size > 10_000  # the margin and accuracy curves

    # the last adapter, loaded by plain transformers + peft over the base, prefers the chosen answers by the
    # margin the reference (the base alone) does not
    adapter = list_checkpoints(recipe.run_dir)[-1] / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    examples = pair_examples(file_pairs(recipe.data.train[0].path))
    template = load_template(adapter)
    encoded = list(zip(encode_examples(tokenizer, template, [c for c, _ in examples], 256),
                       encode_examples(tokenizer, template, [r for _, r in examples], 256)))
    batch = collate_pairs(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        before = answer_logps(base, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
        tuned = PeftModel.from_pretrained(base, adapter).eval()
        after = answer_logps(tuned, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
    ratio = after - before
    chosen, rejected = ratio.chunk(2)
    margins = 0.5 * (chosen - rejected)
    assert margins.mean().item() > 0.2 and (margins > 0).float().mean().item() >= 0.75


def test_a_killed_dpo_run_resumes_to_the_same_weights(tmp_path, tiny_base, dpo_run):
    """The killed run is a process of its own (kill -9); it resumes here, and ends as the module's unbroken run."""
    from tunelab.cli import main
    unbroken = dpo_run[0]
    path = dpo_recipe(tmp_path / "b", tiny_base, "dpo")
    run_dir = load_recipe(path).run_dir
    sigkill_after_a_checkpoint([sys.executable, "-m", "tunelab.cli", "train", str(path)], tmp_path, run_dir)
    assert main(["train", str(path), "--resume"]) == 0
    got, want = metrics_lines(run_dir), metrics_lines(unbroken.run_dir)
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6)
        assert g["rewards/margins"] == pytest.approx(w["rewards/margins"], abs=1e-6)
    a = torch.load(list_checkpoints(run_dir)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    b = torch.load(list_checkpoints(unbroken.run_dir)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("change, says", [
    ({"lora": {"enabled": False}}, "takes its reference from the base under a LoRA adapter"),
    ({"data": {"train": [{"generate": "arithmetic", "count": 10}]}}, "reads preference pairs from files"),
])
def test_recipes_dpo_cannot_train_are_refused(tmp_path, tiny_base, change, says):
    import yaml
    path = dpo_recipe(tmp_path, tiny_base)
    raw = yaml.safe_load(path.read_text())
    for section, value in change.items():
        raw[section] = {**raw[section], **value}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TunelabError, match=says):
        load_recipe(path)


def test_held_out_pairs_are_measured_without_touching_training(tmp_path, tiny_base, dpo_run):
    """`data.val`: the loss, reward accuracy and margins on held-out pairs at every `eval_every` and checkpoint;
    its margins are the ones plain transformers + peft give on those pairs with the checkpoint's adapter, and the
    training lines are the same as a run without validation (no random draw or metrics window disturbed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.packing import encode_examples
    from tunelab.data.preferences import file_pairs, pair_examples
    from tunelab.data.templates import load_template
    from tunelab.train.loop import train
    from tunelab.train.methods.dpo_loss import collate_pairs, answer_logps
    plain = dpo_run[0]
    val_file = write_pairs(tmp_path / "val.jsonl", n=6, seed=7)
    path = dpo_recipe(tmp_path / "val", tiny_base, eval_every=8)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val"] = [{"path": str(val_file)}]
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = load_recipe(path)
    train(recipe)
    lines = metrics_lines(recipe.run_dir)
    held = [x for x in lines if "val_loss" in x]
    ckpts = [int(c.name.split("-")[1]) for c in list_checkpoints(recipe.run_dir)]
    assert [x["step"] for x in held] == sorted({8, 16, 24, 32, *ckpts})
    assert all(x["val_pairs"] == 6 and 0 <= x["val_rewards/accuracies"] <= 1 for x in held)
    assert _same_training_lines([x for x in lines if "val_loss" not in x], metrics_lines(plain.run_dir))

    adapter = list_checkpoints(recipe.run_dir)[-1] / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    examples = pair_examples(file_pairs(val_file))
    template = load_template(adapter)
    batch = collate_pairs(list(zip(encode_examples(tokenizer, template, [c for c, _ in examples], 256),
                                   encode_examples(tokenizer, template, [r for _, r in examples], 256))),
                          tokenizer.pad_token_id)
    with torch.no_grad():
        before = answer_logps(base, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
        tuned = PeftModel.from_pretrained(base, adapter).eval()
        after = answer_logps(tuned, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])[0]
    chosen, rejected = (after - before).chunk(2)
    margins = 0.5 * (chosen - rejected)
    assert held[-1]["val_rewards/margins"] == pytest.approx(margins.mean().item(), abs=1e-4)
    assert held[-1]["val_rewards/accuracies"] == pytest.approx((margins > 0).float().mean().item())


def _same_training_lines(got: list[dict], want: list[dict]) -> bool:
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want):
        for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert g[key] == pytest.approx(w[key], abs=1e-7), (g["step"], key)
    return True


def test_held_out_pairs_belong_to_preference_runs(tmp_path, tiny_base):
    path = dpo_recipe(tmp_path, tiny_base)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val"] = [{"path": str(write_pairs(tmp_path / "val.jsonl"))}]
    raw["train"]["method"] = "sft"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TunelabError, match="data.val holds held-out preference pairs"):
        load_recipe(path)


def test_too_few_pairs_for_a_run_are_warned_about(tmp_path, tiny_base, caplog):
    """16 pairs at a batch of 16 made one DPO step and the run finished quietly: fewer than 10 steps, or fewer
    pairs than one step takes, is a WARNING naming the counts, and the run summary keeps it."""
    import logging

    from tunelab.train.loop import train
    from tunelab.train.setup import few_pairs
    assert few_pairs(12, 32, 4) is None and few_pairs(100, 10, 8) is None  # the runs above: no warning
    assert "fewer pairs than one step takes" in few_pairs(12, 32, 16) and "fewer than 10" not in few_pairs(12, 32, 16)
    recipe = load_recipe(dpo_recipe(tmp_path / "a", tiny_base, max_steps=None, epochs=1, num_checkpoints=1))
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        summary = train(recipe)
    said = ("12 preference pairs make 3 optimizer steps of 4 pairs (train.batch_size x train.grad_accum x "
            "processes): fewer than 10 steps; a preference is hardly learnt from so few")
    assert summary["steps"] == 3 and len(summary["warnings"]) == 1 and summary["warnings"][0].startswith(said)
    assert json.loads((recipe.run_dir / "train_summary.json").read_text())["warnings"] == summary["warnings"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "warning: " + summary["warnings"][0]]

    recipe = load_recipe(dpo_recipe(tmp_path / "b", tiny_base, max_steps=None, epochs=1, num_checkpoints=1,
                                    batch_size=8, grad_accum=2))
    summary = train(recipe)
    assert summary["steps"] == 1 and summary["warnings"][0].startswith(
        "12 preference pairs make 1 optimizer step of 16 pairs (train.batch_size x train.grad_accum x processes): "
        "fewer than 10 steps and fewer pairs than one step takes, so a step repeats pairs")
