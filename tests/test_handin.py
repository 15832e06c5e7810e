"""`tunelab handin`: a finished LoRA run becomes the competition bundle, or a refusal naming what is missing."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import lora_sections, write_recipe
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.handin import evenly_spaced, handin
from tunelab.convert.mindformers import mindspore_to_hf
from tunelab.train.checkpoints import checkpoint_steps

EVAL = {"baseline": True, "batch_size": 16, "max_new_tokens": 8,
        "tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 8, "seed": 9,
                                                    "options": {"kinds": ["int_mul"], "int_digits": 2}}},
                  {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True}]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("handin")
    sections = lora_sections(tiny_base, max_steps=10)
    sections["lora"]["target_modules"] = ["q_proj", "v_proj", "o_proj"]
    path = write_recipe(root, "lora", eval=EVAL, score={"formula": "stage1", "total_params": 8.03e9}, **sections)
    assert main(["run", str(path)]) == 0
    return root / "runs" / "lora"


def test_bundle_is_complete_and_checksummed(finished_run, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["handin", str(finished_run), "--out", str(out), "--format", "both"]) == 0
    assert "sha256sum -c MANIFEST.sha256" in capsys.readouterr().out
    metrics = json.loads((finished_run / "metrics.json").read_text())
    steps = [c.name for c in sorted((finished_run / "checkpoints").iterdir())]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == steps
    for step in steps:  # each merged checkpoint as MindFormers .ckpt that converts back to the HF export
        d = out / "checkpoints" / step
        assert (d / "model.safetensors").exists() and (d / "mindspore" / "model.ckpt").exists()
        mc = yaml.safe_load((d / "mindspore" / "model_config.yaml").read_text())["model"]["model_config"]
        assert mc["type"] == "LlamaConfig" and mc["num_layers"] >= 1
    back = tmp_path / "back"
    mindspore_to_hf(out / "checkpoints" / steps[-1] / "mindspore" / "model.ckpt", back,
                    config=out / "checkpoints" / steps[-1])
    ours, src = load_file(back / "model.safetensors"), load_file(out / "checkpoints" / steps[-1] / "model.safetensors")
    tied = "lm_head.weight" not in src  # a tied model's head is written out (MindFormers' Llama has its own)
    if tied:
        assert torch.equal(ours.pop("lm_head.weight"), src["model.embed_tokens.weight"])
    assert sorted(ours) == sorted(src) and all(torch.equal(ours[k], src[k]) for k in src)

    mf = yaml.safe_load((out / "mindformers.yaml").read_text())
    assert mf["model"]["model_config"]["pet_config"] == {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                                                         "lora_dropout": 0.1, "target_modules": ".*wq|.*wv|.*wo"}
    assert mf["runner_config"]["batch_size"] == 4
    # the MindFormers fragment reads back into the same LoRA settings through the recipe's aliases
    from tunelab.recipe.loader import _apply_aliases
    lora = _apply_aliases({"pet_config": mf["model"]["model_config"]["pet_config"]}, "x")["lora"]
    assert lora["target_modules"] == ".*q_proj|.*v_proj|.*o_proj" and lora["rank"] == 4

    report = (out / "report.md").read_text()
    assert f"{100 * metrics['score']['accuracy']:.2f}%" in report and f"{metrics['score']['value']:.4f}" in report
    assert f"{metrics['ratio']['ratio']:.9g}" in report
    for key in metrics["retention"]:
        assert f"| {key} |" in report
    assert metrics["best_checkpoint"] in report
    assert (out / "logs" / "metrics.jsonl").read_bytes() == (finished_run / "metrics.jsonl").read_bytes()
    assert (out / "logs" / "eval-base.json").exists()
    assert {p.parent.name for p in (out / "predictions").glob("*/*.predictions.jsonl")} == {"base", *steps}
    assert (out / "plots" / "loss.png").exists() and (out / "plots" / "checkpoints.png").exists()
    env = (out / "environment.txt").read_text()
    assert env.startswith("python 3.") and f"torch {torch.__version__}" in env and "transformers==" in env
    desc = (out / "DESCRIPTION.md").read_text()
    assert "LoRA (rank 4, alpha 8" in desc and "TODO" in desc and "generated arithmetic" in desc
    # what the run knows is filled in: the machine it trained on and how long it took
    summary = json.loads((finished_run / "train_summary.json").read_text())
    from tunelab.train.mfu import machine_name
    assert summary["hardware"].startswith(machine_name("cpu")) and f"- hardware: {summary['hardware']}" in desc
    assert f"- training wall-clock: {summary['train_seconds'] / 60:.1f} min" in desc

    listed = dict(reversed(line.split("  ", 1)) for line in (out / "MANIFEST.sha256").read_text().splitlines())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"MANIFEST.sha256"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_environment_lists_only_packages_beyond_the_base(finished_run, tmp_path):
    from importlib import metadata

    from tunelab.handin import environment_text
    base = tmp_path / "base.txt"
    names = sorted({(d.metadata["Name"] or "").lower() for d in metadata.distributions()} - {"", "pyyaml"})
    base.write_text("\n".join(f"{n}==0" for n in names) + "\n")
    env = environment_text(base)
    assert env.split("\n\n", 1)[1].splitlines()[1:] == [f"pyyaml=={metadata.version('pyyaml')}"]


def test_refusals_name_what_is_missing(finished_run, tmp_path):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(finished_run, d)
        return d

    four = copy("four")
    shutil.rmtree(sorted((four / "checkpoints").iterdir())[1])
    with pytest.raises(TunelabError, match="the rules ask for 5 checkpoints, this run has 4"):
        handin(four, tmp_path / "o1")
    uneven = copy("uneven")
    first = sorted((uneven / "checkpoints").iterdir())[0]
    first.rename(first.with_name("step-000001"))
    with pytest.raises(TunelabError, match=r"not evenly spaced: steps \[1, 4, 6, 8, 10\]"):
        handin(uneven, tmp_path / "o2")
    no_retention = copy("no-retention")
    m = json.loads((no_retention / "metrics.json").read_text())
    del m["retention"]
    (no_retention / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(TunelabError, match="no retention result"):
        handin(no_retention, tmp_path / "o3")
    damaged = copy("damaged")
    state = sorted((damaged / "checkpoints").iterdir())[2] / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(TunelabError, match=r"checkpoint step-000006 is damaged \(trainer_state.pt: truncated"):
        handin(damaged, tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 5))
    assert main(["handin", str(four), "--out", str(tmp_path / "o4")]) == 2


def test_evenly_spaced_accepts_what_training_writes():
    for total in range(5, 400):
        assert evenly_spaced(checkpoint_steps(total, 5)), total
    assert not evenly_spaced([10, 40, 60, 80, 100])
    assert not evenly_spaced([20, 20, 40, 60, 80])


def test_a_run_starts_from_the_organisers_ckpt_converted_once(tiny_base, tmp_path, monkeypatch, capsys):
    """model.path: a MindFormers .ckpt with its YAML and a tokenizer: converted once into the cache (bit for bit
    the HF weights it came from), trained from, and reused by the next run without converting again."""
    from safetensors.torch import load_file as load

    from tunelab.convert.mindformers import hf_to_mindspore, mindformers_model_config
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    hf_to_mindspore(tiny_base, tmp_path / "base.ckpt")
    cfg = json.loads((tiny_base / "config.json").read_text())
    (tmp_path / "predict_base.yaml").write_text(yaml.safe_dump({"model": {"model_config": mindformers_model_config(cfg)}}))
    model = {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(tmp_path / "base.ckpt"),
             "mindformers_config": str(tmp_path / "predict_base.yaml"), "tokenizer": str(tiny_base)}
    sections = lora_sections(tiny_base, max_steps=2)
    for name in ("first", "second"):
        path = write_recipe(tmp_path, name, **{**sections, "model": model})
        assert main(["train", str(path)]) == 0
    notes = capsys.readouterr().err  # the conversion is a start-up note (stderr; stdout holds the result)
    assert notes.count("converting ") == 1, notes
    [converted] = list((tmp_path / "cache" / "converted").iterdir())
    assert converted.name.startswith("base-") and (converted / "tokenizer.json").exists()
    ours, src = load(converted / "model.safetensors"), load(tiny_base / "model.safetensors")
    assert all(torch.equal(ours[k], src[k]) for k in src)
    saved = yaml.safe_load((tmp_path / "runs" / "second" / "recipe.yaml").read_text())
    assert saved["model"]["path"] == str(converted)

    del model["mindformers_config"]
    path = write_recipe(tmp_path, "third", **{**sections, "model": model})
    assert main(["train", str(path)]) == 2
    assert "needs mindformers_config" in capsys.readouterr().err


def test_description_names_a_replayed_corpus_as_such():
    from tunelab.handin import description
    recipe = {"name": "sft", "lora": {"enabled": False}, "model": {"path": "runs/pre"},
              "data": {"train": [{"path": "qa.jsonl"}, {"corpus": "corpus", "replay": 0.5}], "template": "sep"},
              "train": {"precision": "fp32"}}
    summary = {"trainable_params": 10, "total_params": 10, "samples": 6048, "replayed_blocks": 818, "steps": 240,
               "hardware": "CPU X (2 threads)", "train_seconds": 296.0}
    desc = description(recipe, summary, {"ratio": {"ratio": 1.0}, "best_checkpoint": "step-000180"})
    assert "  - corpus corpus (replayed as 50% of the training tokens, 818 blocks)" in desc
    assert "  - qa.jsonl (format auto, count all)" in desc and "generated None" not in desc
    assert "- training wall-clock: 4.9 min" in desc and "- hardware: CPU X (2 threads)" in desc


@pytest.mark.parametrize("change, says", [
    ({"train": {"num_checkpoints": 2}}, "five evenly spaced checkpoints"),
    ({"eval": {"tasks": []}}, "score.accuracy_task among them"),
])
def test_a_recipe_asking_for_its_handin_is_checked_before_training(tmp_path, tiny_base, change, says):
    """`score.handin`: the run writes its hand-in once evaluated; a recipe that could never make one is refused
    when it loads, not after its training."""
    from tunelab.recipe import load_recipe
    sections = lora_sections(tiny_base, max_steps=5, num_checkpoints=5)
    evals = {"tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 8, "seed": 9}},
                       {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 10},
                        "ability": True}]}
    path = write_recipe(tmp_path, "h", **sections, eval=evals, score={"handin": "mindspore"})
    assert load_recipe(path).score.handin == "mindspore"
    raw = yaml.safe_load(path.read_text())
    for section, values in change.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TunelabError, match=says):
        load_recipe(path)


@pytest.mark.parametrize("replay, says", [
    ({"of": "self", "count": 96, "prompts": ["shipped", "forms"], "max_new_tokens": 320, "loops": "cut"},
     "  - the base's own answers to general prompts (shipped, forms), replayed: 96 drawn, up to 320 tokens, cut "
     "where they loop"),
    ("self", "  - the base's own answers to general prompts (shipped), replayed: 10% of the examples, up to 128 "
             "tokens"),
    (None, None),
])
def test_description_names_the_replayed_answers_and_an_rft_method(replay, says):
    """A hand-in's DESCRIPTION says what kept the abilities (the base's own answers replayed) and, for a chain's
    rft stage, that its steps were rejection sampling, not fine-tuning on the sources alone."""
    from tunelab.handin import description
    recipe = {"name": "best", "lora": {"enabled": False}, "model": {"path": "runs/best.sft/adapter"},
              "data": {"train": [{"generate": "arithmetic", "count": 480}], "replay": replay},
              "train": {"method": "rft", "rft": {"num_generations": 8, "temperature": 0.7, "keep": 2}}}
    summary = {"trainable_params": 10, "total_params": 10, "samples": 576, "steps": 72, "hardware": "CPU X",
               "train_seconds": 60.0}
    desc = description(recipe, summary, {"ratio": {"ratio": 1.0}, "best_checkpoint": "step-000072"})
    assert ("the base's own answers" in desc) == (says is not None)
    if says:
        assert says in desc
    assert ("- method: rejection-sampling fine-tuning (RFT): 8 answers a problem sampled at temperature 0.7, at most "
            "2 the grader accepts trained a problem") in desc
    sft = description({**recipe, "train": {}}, summary, {"ratio": {"ratio": 1.0}, "best_checkpoint": "step-000072"})
    assert "- method:" not in sft


@pytest.mark.parametrize("train, summary, says", [
    ({"epochs": 1, "max_steps": 100, "batch_size": 8}, {"rows_per_epoch": 1574, "world_size": 1},
     "- 100 optimizer steps, train.max_steps 100: 0.51 of an epoch of 1,574 rows, batch size 8"),
    ({"epochs": 1, "max_steps": 100, "batch_size": 4, "grad_accum": 2}, {"rows_per_epoch": 400, "world_size": 2},
     "- 100 optimizer steps, train.max_steps 100: 4 of an epoch of 400 rows, batch size 4 x grad_accum 2"),
    ({"epochs": 1, "batch_size": 8}, {"rows_per_epoch": 1574, "world_size": 1},
     "- 100 optimizer steps, epochs 1, batch size 8"),
    ({"epochs": 2, "max_steps": 100, "batch_size": 8}, {}, "- 100 optimizer steps, epochs 2, batch size 8"),
])
def test_description_says_how_much_of_an_epoch_a_short_schedule_saw(train, summary, says):
    """`train.max_steps` ending the schedule before an epoch (the hour recipe: 100 steps of 197) is named with the
    share of the epoch it trained, not as the recipe's `epochs`; without the row count the recipe's epochs stand."""
    from tunelab.handin import description
    recipe = {"name": "hour", "lora": {"enabled": False}, "model": {"path": "base"},
              "data": {"train": [{"generate": "arithmetic", "count": 3000}]}, "train": train}
    summary = {"trainable_params": 10, "total_params": 10, "samples": 3000, "steps": 100, "hardware": "CPU X",
               "train_seconds": 60.0, **summary}
    assert says in description(recipe, summary, {"ratio": {"ratio": 1.0}, "best_checkpoint": "step-000100"})
