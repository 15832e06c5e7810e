"""The MiniGPT course's GRPO stage (`recipes/minigpt-cpu-grpo.yaml`, issue 35 item 6).

The shipped recipe is checked for what its header promises: a fresh LoRA adapter on the SFT run, the SFT
training questions under the `sep` template, the rougel grader's exact answer (plus a fifth of its Rouge-L F)
as the reward, and the SFT recipe's own evaluation, so before and after are the same held-out measure. Then the
same recipe, made tiny, runs end to end on a micro course (pretraining and SFT as `tests/test_sft.py` builds
them): its "before" is the SFT run's best checkpoint measured exactly as the SFT run measured it, its adapter
sits on that checkpoint and leaves it untouched, and its per-step reward is the weighted sum of its terms."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_sft import _pretrain_recipe

from tunelab.cli import main
from tunelab.data.examples import Example
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
GRPO = ROOT / "recipes" / "minigpt-cpu-grpo.yaml"
SFT = ROOT / "recipes" / "minigpt-cpu-sft.yaml"


def test_the_shipped_recipe_is_a_lora_grpo_stage_on_the_sft_run_measured_as_sft_is():
    from tunelab.pipeline import training_rewards
    grpo, sft = load_recipe(GRPO, check_data=False), load_recipe(SFT, check_data=False)  # no runs/ in a clone
    assert grpo.model.path == f"runs/{sft.name}" and grpo.lora.enabled and not sft.lora.enabled
    assert grpo.train.method == "grpo" and grpo.data.template == sft.data.template == "sep"
    assert [s.path for s in grpo.data.train] == [sft.data.train[0].path]   # the SFT pairs, no replayed corpus
    # the same evaluation as the SFT run: the before/after table compares like with like
    assert grpo.eval.tasks == sft.eval.tasks and grpo.eval.max_new_tokens == sft.eval.max_new_tokens
    rewards = training_rewards(grpo)
    assert rewards.names == ["rougel", "rougel_f"] and rewards.weights == [1.0, 0.2]
    year = Example(id="y", instruction="红江站于哪一年开通？", output="1949年")
    place = Example(id="p", instruction="叶光曾长期在哪个机构工作？", output="平望省科学院")
    scores = rewards.score(["q"] * 5, ["1949年", " 1949年 ", "1948年", "平望市科学院", "红江市"],
                           [year, year, year, place, place])
    # exact (stripped) scores 1 + 0.2; char segmentation keeps a number whole, so 1948|年 against 1949|年 is F 0.5,
    # and one Chinese character of six wrong is F 5/6: a fifth of that; nothing in common scores 0
    assert rewards.total(scores) == pytest.approx([1.2, 1.2, 0.1, 0.2 * 5 / 6, 0.0])


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A micro course: pretraining (which splits the QA pairs) and full fine-tuning on it, as test_sft's."""
    tmp = tmp_path_factory.mktemp("grpo-course")
    assert main(["run", str(_pretrain_recipe(tmp))]) == 0
    qa = tmp / "data" / "sft-qa"
    sft = tmp / "sft.yaml"
    sft.write_text(yaml.safe_dump({
        "name": "sft", "output_dir": str(tmp / "runs"), "model": {"path": str(tmp / "runs" / "pre")},
        "lora": {"enabled": False}, "report_to": [],
        "data": {"template": "sep", "max_seq_len": 128, "train": [{"path": str(qa / "train.jsonl")}]},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "num_checkpoints": 1, "threads": 1,
                  "log_every": 10},
        "eval": _eval(tmp)}, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(sft)]) == 0
    return tmp


def _eval(tmp: Path) -> dict:
    return {"batch_size": 16, "max_new_tokens": 24, "tasks": [
        {"task": "ppl", "source": {"corpus": str(tmp / "data" / "corpus")}},
        {"task": "rougel", "name": "qa", "source": {"path": str(tmp / "data" / "sft-qa" / "val.jsonl")},
         "limit": 24, "options": {"segmentation": "char", "samples": 4}}]}


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_the_grpo_stage_runs_on_the_sft_run_and_reports_against_it(course):
    runs = course / "runs"
    sft = json.loads((runs / "sft" / "metrics.json").read_text(encoding="utf-8"))
    sft_model = runs / "sft" / "checkpoints" / sft["best_checkpoint"] / "model"
    before = _digest(sft_model)
    raw = yaml.safe_load(GRPO.read_text(encoding="utf-8"))   # the shipped recipe, made tiny
    raw.update(name="grpo", output_dir=str(runs), report_to=[], eval=_eval(course))
    raw["model"]["path"] = str(runs / "sft")
    raw["data"]["train"][0]["path"] = str(course / "data" / "sft-qa" / "train.jsonl")
    raw["train"].update(max_steps=6, batch_size=4, num_checkpoints=2, log_every=2, threads=1)
    raw["train"]["grpo"].update(num_generations=4)
    path = course / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(path)]) == 0

    m = json.loads((runs / "grpo" / "metrics.json").read_text(encoding="utf-8"))
    ckpts = list_checkpoints(runs / "grpo")
    assert m["course"] and m["method"] == "grpo" and m["later_stage"] and m["roles"] == ["sft", "grpo"]
    assert m["base_model"] == str(sft_model) and m["best_checkpoint"] == ckpts[-1].name and m["best_by"] == "last"
    assert set(m["checkpoints"]) == {c.name for c in ckpts}   # eval.checkpoints all: every one measured
    # "before" is the SFT run's best checkpoint, measured exactly as the SFT run measured it
    for label in ("ppl", "qa"):
        ours, theirs = m["base"][label], sft["checkpoints"][sft["best_checkpoint"]][label]
        for key in ("perplexity",) if label == "ppl" else ("exact", "rougeL_f", "stop_rate", "n"):
            assert ours[key] == pytest.approx(theirs[key]), (label, key)
    # a fresh adapter on the full fine-tune: the SFT checkpoint is its base and is left as it was
    adapter = ckpts[-1] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert Path(config["base_model_name_or_path"]).resolve() == sft_model.resolve()
    assert _digest(sft_model) == before
    from safetensors.torch import load_file
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(torch.count_nonzero(v) for k, v in weights.items() if "lora_B" in k)   # it trained
    # the sampled reward, per logged window: each term's mean in 0..1, the reward their weighted sum
    lines = [json.loads(x) for x in (runs / "grpo" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = [x for x in lines if "reward" in x]
    assert [x["step"] for x in lines] == [2, 4, 6]
    for x in lines:
        assert 0 <= x["rewards/rougel/mean"] <= 1 and 0 <= x["rewards/rougel_f/mean"] <= 1
        assert x["reward"] == pytest.approx(x["rewards/rougel/mean"] + 0.2 * x["rewards/rougel_f/mean"], abs=1e-5)
    first, last = m["sampled_reward"]["first"], m["sampled_reward"]["last"]   # a quarter of 3 windows: one each
    assert (first["from_step"], first["step"], last["from_step"], last["step"]) == (1, 2, 5, 6)
    assert (first["reward"], last["reward"]) == pytest.approx((lines[0]["reward"], lines[-1]["reward"]))
    report = (runs / "grpo" / "report.md").read_text(encoding="utf-8")
    for text in (f"## sft vs grpo ({ckpts[-1].name})", "| task | measure | sft | grpo |", "## Sampled reward",
                 "exact answers (Rouge-L F = 1)",
                 f"tunelab ui --model grpo={runs / 'grpo'} --model sft={runs / 'sft'}"):
        assert text in report, text
    assert (runs / "grpo" / "course.png").stat().st_size > 0
