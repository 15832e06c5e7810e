"""A recipe with `stages:` (`tunelab.recipe.stages`, `tunelab.pipeline.chain`): each stage's recipe built from the
recipe's sections and its own, each continuing the one before, one report with every stage's gain and cost, the
hand-in made from the chain's model; what a stage would measure again is carried; a finished stage is kept on
--resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import lora_sections, write_recipe
from test_grpo_run import run_train

from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints

EVAL = {"baseline": True, "batch_size": 16, "max_new_tokens": 8, "tasks": [
    {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 16, "seed": 9,
                                      "options": {"kinds": ["int_add"], "int_digits": 1}}},
    {"task": "reading", "source": {"generate": "reading", "count": 12, "seed": 10}, "ability": True}]}


def chain_recipe(directory: Path, base: Path, **top) -> Path:
    """SFT (LoRA, 6 steps, 2 checkpoints) then RFT on its best adapter (5 steps, 5 checkpoints, the last
    evaluated): the shape of recipes/smollm2-math-best.yaml on the tiny base."""
    sections = lora_sections(base, max_steps=6, batch_size=4, log_every=2, num_checkpoints=2)
    sections["data"]["max_seq_len"] = 96
    raw = yaml.safe_load(write_recipe(directory, "best", **sections, eval=EVAL, report_to=[],
                                      score={"formula": "stage1", "accuracy_task": "arithmetic"}).read_text())
    raw["stages"] = [
        {"name": "sft"},
        {"name": "rft",
         "data": {"train": [{"generate": "arithmetic", "count": 40, "seed": 21,
                             "options": {"kinds": ["int_add"], "int_digits": 1}}]},
         "train": {"method": "rft", "max_steps": 5, "num_checkpoints": 5, "lr": 1e-3,
                   "rft": {"num_generations": 4, "max_completion_length": 8, "temperature": 1.0, "keep": 2,
                           "rewards": [{"task": "arithmetic"}]}},
         "eval": {"checkpoints": "last"}},
    ]
    raw.update(top)
    path = directory / "best.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_each_stage_is_a_whole_recipe_continuing_the_one_before(tmp_path, tiny_base):
    recipe = load_recipe(chain_recipe(tmp_path, tiny_base))
    sft, rft = recipe.stage_recipes
    runs = tmp_path / "runs"
    assert sft.run_dir == runs / "best.sft" and rft.run_dir == runs / "best" == recipe.run_dir
    assert sft.model.path == str(tiny_base) and Path(rft.model.path) == runs / "best.sft"
    assert (sft.train.method, rft.train.method) == ("sft", "rft")
    assert rft.train.batch_size == 4 and rft.lora.rank == 4  # what the stage does not change is the recipe's
    assert [s.seed for s in rft.data.train] == [21]  # a list replaces
    assert rft.eval.checkpoints == "last" and [t.task for t in rft.eval.tasks] == ["arithmetic", "reading"]
    assert not sft.stages and not rft.stages


@pytest.mark.parametrize("change, field, says", [
    ({"stages": [{"name": "only"}]}, "stages", "two stages or more"),
    ({"stages": [{"name": "a"}, {"name": "a"}]}, "stages", "a name of its own"),
    ({"stages": [{"name": "a"}, {"name": "b", "model": {"path": "x"}}]}, "stages.1.model", "unknown key"),
    ({"stages": [{"name": "a"}, {"name": "b", "train": {"lr": -1}}]}, "stages.1.train.lr", "greater than 0"),
    ({"stages": [{"name": "a"}, {"name": "b", "train": {"method": "dpo"}}]}, "", "in stage 'b': "),
    ({"stages": [{"name": "a"}, {"name": "b/c"}]}, "stages.1.name", "pattern"),
    ({"score": {"handin": "hf", "accuracy_task": "arithmetic"}, "stages": [{"name": "a"}, {"name": "b"}]}, "",
     "in stage 'a': Value error, score.handin: the rules ask for five"),  # any stage may be the one handed in
    ({"score": {"handin": "hf", "accuracy_task": "arithmetic"}, "train": {"num_checkpoints": 5},
      "stages": [{"name": "a"}, {"name": "b", "train": {"num_checkpoints": 2}}]}, "",
     "in stage 'b': Value error, score.handin: the rules ask for five"),
])
def test_a_chain_mistake_is_one_error_naming_the_stage(tmp_path, tiny_base, change, field, says):
    path = chain_recipe(tmp_path, tiny_base)
    raw = yaml.safe_load(path.read_text())
    raw.update(change)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        load_recipe(path)
    assert (e.value.field or "").startswith(field) and says in str(e.value), str(e.value)
    assert e.value.line is not None


def test_a_chain_runs_its_stages_reports_each_and_hands_in_its_model(tmp_path, tiny_base, capsys):
    from tunelab.pipeline.chain import write_chain_handin
    from tunelab.pipeline.chain_report import chain_choice
    path = chain_recipe(tmp_path, tiny_base)
    raw = yaml.safe_load(path.read_text())
    raw["score"]["handin"] = "hf"
    raw["train"]["num_checkpoints"] = 5  # either stage may be handed in: both keep five
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    capsys.readouterr()
    assert run_train(path, verb="run") == 0
    out = capsys.readouterr()
    sft_dir, final = tmp_path / "runs" / "best.sft", tmp_path / "runs" / "best"
    sft = json.loads((sft_dir / "metrics.json").read_text())
    metrics = json.loads((final / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["chain"]] == ["sft", "rft"]
    assert [s["method"] for s in metrics["chain"]] == ["sft", "rft"]
    first, second = metrics["chain"]
    assert first["accuracy"] == sft["score"]["accuracy"] and first["best_checkpoint"] == sft["best_checkpoint"]
    assert second["start_accuracy"] == pytest.approx(first["accuracy"])  # the RFT stage starts where SFT ended
    assert all(s["wall_seconds"] > 0 and s["steps"] for s in metrics["chain"])
    assert len(list_checkpoints(final)) == 5 and list(metrics["checkpoints"]) == ["step-000005"]

    # carried, not measured again: the start is the SFT stage's best checkpoint on the same tasks, and the
    # original base's abilities are the SFT stage's base
    start = json.loads((final / "eval" / "base" / "results.json").read_text())
    assert start == json.loads((sft_dir / "eval" / sft["best_checkpoint"] / "results.json").read_text())
    origin = json.loads((final / "eval" / "original-base" / "results.json").read_text())
    assert origin == {"reading": json.loads((sft_dir / "eval" / "base" / "results.json").read_text())["reading"]}
    assert "carried from" in out.err
    assert metrics["retention"]["reading.f1"]["base"] == origin["reading"]["f1"]

    report = (final / "report.md").read_text()
    assert "## Stages" in report and "| sft | sft |" in report and "| rft | rft |" in report
    assert "stage sft (sft):" in out.out and "stage rft (rft):" in out.out
    handin = final / "handin"
    assert (handin / "MANIFEST.sha256").is_file() and len(list((handin / "checkpoints").iterdir())) == 5
    chosen = (chain_choice(metrics["chain"]) or {}).get("stage", "rft")
    made_from = yaml.safe_load((handin / "recipe.yaml").read_text())["name"]
    assert made_from == {"sft": "best.sft", "rft": "best"}[chosen]
    assert ("## Stages" in (handin / "run_report.md").read_text()) == (chosen == "rft")

    # the chain's model, not its last stage: a last stage that lost an ability is not handed in
    recipe = load_recipe(path)
    lost = [{**s, "retention": {"verdict": v, "entries": {}}} for s, v in zip(metrics["chain"], ("PASS", "FAIL"))]
    write_chain_handin(recipe, lost)
    assert yaml.safe_load((handin / "recipe.yaml").read_text())["name"] == "best.sft"
    assert sorted(p.name for p in (handin / "checkpoints").iterdir()) == [c.name for c in list_checkpoints(sft_dir)]
    assert "the chain's model" in capsys.readouterr().err
    from tunelab.cli import main  # by hand, the last stage by name: handed in, the chain's model named
    (final / "metrics.json").write_text(json.dumps({**metrics, "chain": lost}))
    assert main(["handin", str(final), "--out", str(tmp_path / "by-hand"), "--format", "hf"]) == 0
    assert f"whose model is stage sft ({sft_dir}" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "by-hand" / "recipe.yaml").read_text())["name"] == "best"
    (final / "metrics.json").write_text(json.dumps(metrics))
    none_kept = [{**s, "retention": {"verdict": "FAIL", "entries": {}}} for s in metrics["chain"]]
    write_chain_handin(recipe, none_kept)  # no stage keeps every ability: the last is what the chain made
    assert yaml.safe_load((handin / "recipe.yaml").read_text())["name"] == "best"

    # --resume: both stages finished, neither trains again; without it, the chain is not overwritten
    mtime = (sft_dir / "train_summary.json").stat().st_mtime_ns, (final / "train_summary.json").stat().st_mtime_ns
    assert run_train(path, "--resume", verb="run") == 0
    assert ((sft_dir / "train_summary.json").stat().st_mtime_ns,
            (final / "train_summary.json").stat().st_mtime_ns) == mtime
    assert run_train(path, verb="run") != 0
    assert "already exists" in capsys.readouterr().err


def test_train_refuses_a_chain(tmp_path, tiny_base, capsys):
    assert run_train(chain_recipe(tmp_path, tiny_base)) != 0
    assert "tunelab run" in capsys.readouterr().err


def test_the_shipped_best_recipe_is_sft_then_rft_on_the_same_held_out_problems():
    """recipes/smollm2-math-best.yaml as its header says: fine-tuning with the base's answers to general prompts and
    form requests replayed, then RFT on its best adapter on fresh problems with the same answers replayed beside
    the accepted ones; every worked answer fits the evaluation's and the rollouts' room;
    both stages judged on the same 500
    held-out problems and every ability (forms included), so the RFT stage's start is carried, not re-evaluated;
    the hand-in made from the chain's model, either stage, five checkpoints each."""
    from tunelab.pipeline.chain import _eval_settings
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "smollm2-math-best.yaml", check_data=False)
    sft, rft = recipe.stage_recipes
    assert (sft.train.method, rft.train.method) == ("sft", "rft") and rft.model.path == str(sft.run_dir)
    assert sft.data.replay.prompts == rft.data.replay.prompts == ["shipped", "forms"]
    assert sft.data.replay.max_new_tokens == rft.data.replay.max_new_tokens  # one cache of the base's answers
    assert {src.options["show_work"] for src in (sft.data.train[0], rft.data.train[0], sft.eval.tasks[0].source)
            } == {"compare"}  # SmolLM2's tokenizer makes the longest such answer 88 tokens
    assert sft.eval.max_new_tokens >= 88 and rft.train.rft.max_completion_length >= 88
    assert _eval_settings(sft) == _eval_settings(rft)
    assert sft.eval.checkpoints == rft.eval.checkpoints == "last"  # a stage's result, not its half-way point
    held_out = sft.eval.tasks[0].source
    assert held_out.count == 500 and held_out.seed not in {s.seed for s in sft.data.train + rft.data.train}
    assert {t.task for t in sft.eval.tasks if t.ability} == {"reading", "instructions", "knowledge",
                                                               "base_agreement", "forms"}
    assert recipe.score.handin == "mindspore" and sft.train.num_checkpoints == rft.train.num_checkpoints == 5


def test_the_shipped_hour_recipe_is_the_best_recipes_first_stage_ending_at_100_steps():
    """recipes/smollm2-math-hour.yaml as its header says: the best recipe's sft stage, the same data, replay,
    evaluation, score and hand-in, its schedule ending at step 100 (so the hour's figures in docs/smollm2.md are
    that stage's on a shorter cosine, nothing else)."""
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    hour = load_recipe(recipes / "smollm2-math-hour.yaml", check_data=False)
    sft = load_recipe(recipes / "smollm2-math-best.yaml", check_data=False).stage_recipes[0]
    assert hour.train.max_steps == 100 and sft.train.max_steps is None
    assert hour.score.handin == "mindspore" and hour.train.num_checkpoints == 5
    one, other = hour.model_dump(), sft.model_dump()
    for raw in (one, other):
        for key in ("name", "description", "stages", "output_dir"):
            raw.pop(key, None)
        raw["train"].pop("max_steps")
        raw["score"].pop("handin")  # a chain's stage leaves its hand-in to the chain
    assert one == other


def _stage(name, accuracy, verdict):
    return {"stage": name, "method": name, "run_dir": f"runs/x.{name}", "best_checkpoint": "step-000010",
            "accuracy": accuracy, "retention": {"verdict": verdict, "entries": {}} if verdict else None}


@pytest.mark.parametrize("stages, chosen, says", [
    ([("sft", 0.928, "PASS"), ("rft", 0.932, "FAIL")], "sft", "lost an ability (rft)"),
    ([("sft", 0.928, "PASS"), ("rft", 0.932, "PASS")], "rft", None),
    ([("sft", 0.95, "PASS"), ("rft", 0.93, "PASS")], "sft", "were less accurate"),
    ([("sft", 0.928, "PASS"), ("rft", 0.928, "PASS")], "rft", None),  # a tie: the later stage
    ([("sft", 0.9, "FAIL"), ("rft", 0.93, "FAIL")], None, "none of its stages keeps every ability"),
    ([("sft", 0.9, None), ("rft", 0.93, None)], None, None),  # no abilities judged: nothing to say
])
def test_the_chain_names_its_model_when_the_last_stage_is_not_it(stages, chosen, says):
    """The chain's model is the most accurate stage that keeps every ability; the summary says so only when that is
    not the last stage (whose run holds the report and the hand-in)."""
    from tunelab.pipeline.chain_report import chain_choice, chain_summary_lines
    chain = [_stage(*s) for s in stages]
    assert (chain_choice(chain) or {}).get("stage") == chosen
    lines = chain_summary_lines(chain)
    assert len(lines) == len(chain) + (says is not None)
    if says:
        assert says in lines[-1] and (chosen is None or f"stage {chosen}'s step-000010 (runs/x.{chosen})" in lines[-1])


@pytest.mark.parametrize("chain, elsewhere", [
    ([_stage("sft", 0.928, "PASS"), _stage("rft", 0.932, "FAIL")], "sft"),
    ([_stage("sft", 0.928, "PASS"), _stage("rft", 0.932, "PASS")], None),  # the last stage is the model
    ([_stage("sft", 0.9, "FAIL"), _stage("rft", 0.93, "FAIL")], None),
    ({"sft": 1}, None), (["sft", "rft"], None), ("x", None), (None, None),  # not a list of stages: no note
])
def test_a_by_hand_hand_in_names_the_chains_model_only_when_it_is_another_stage(tmp_path, chain, elsewhere):
    from tunelab.pipeline.chain_report import chain_model_elsewhere
    assert chain_model_elsewhere(tmp_path) is None  # no metrics.json
    (tmp_path / "metrics.json").write_text(json.dumps({"chain": chain}))
    assert (chain_model_elsewhere(tmp_path) or {}).get("stage") == elsewhere
