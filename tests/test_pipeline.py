"""`tunelab run` end to end on tiny models: base eval → LoRA → every checkpoint evaluated → score → report."""

from __future__ import annotations

import json

import pytest

from conftest import lora_sections
from tunelab.cli import main

EVAL = {
    "baseline": True, "batch_size": 16, "max_new_tokens": 12,
    "tasks": [
        {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 24, "seed": 9,
                                          "options": {"kinds": ["int_mul"], "int_digits": 2}}},
        {"task": "reading", "source": {"generate": "reading", "count": 16, "seed": 8}, "ability": True},
        {"task": "arithmetic", "name": "addition", "source": {
            "generate": "arithmetic", "count": 16, "seed": 7, "options": {"kinds": ["int_add"], "int_digits": 2}}},
    ],
}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base):
    from conftest import write_recipe
    root = tmp_path_factory.mktemp("pipeline")
    path = write_recipe(root, "lora", eval=EVAL, score={"formula": "stage1", "total_params": 8.03e9},
                        **lora_sections(tiny_base, max_steps=10))
    assert main(["run", str(path)]) == 0
    return root / "runs" / "lora", path


def test_run_writes_every_artifact(lora_run):
    run_dir, _ = lora_run
    for name in ("recipe.yaml", "metrics.jsonl", "metrics.json", "report.md", "loss.png", "checkpoints.png",
                 "train_summary.json"):
        assert (run_dir / name).exists(), name
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == [f"step-{s:06d}" for s in (2, 4, 6, 8, 10)]
    for c in ckpts:  # every checkpoint evaluated, predictions written per eval entry
        for label in ("arithmetic", "reading", "addition"):
            rows = [json.loads(x) for x in (run_dir / "eval" / c.name / f"{label}.predictions.jsonl")
                    .read_text(encoding="utf-8").splitlines()]
            assert {"id", "problem", "prediction", "reference", "correct"} <= rows[0].keys()
    assert (run_dir / "eval" / "base" / "results.json").exists()


def test_metrics_pick_best_and_score_it(lora_run):
    run_dir, _ = lora_run
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    accs = {k: v["arithmetic"]["accuracy"] for k, v in m["checkpoints"].items()}
    assert m["best_checkpoint"] == max(accs, key=accs.get)
    acc = accs[m["best_checkpoint"]]
    ratio = m["ratio"]["trainable"] / 8.03e9
    assert m["ratio"]["ratio"] == pytest.approx(ratio)
    assert m["score"]["value"] == pytest.approx((1 - ratio) * 0.3 + acc * 0.7)
    assert m["accuracy_gain"] == pytest.approx(acc - m["base"]["arithmetic"]["accuracy"])
    # the same change, paired on the same problems from the two evaluations' graded answers, with its interval
    rows = [{json.loads(x)["id"]: json.loads(x)["correct"] for x in (run_dir / "eval" / name / "arithmetic.predictions"
                                                                      ".jsonl").read_text(encoding="utf-8").splitlines()}
            for name in ("base", m["best_checkpoint"])]
    change = m["accuracy_change"]
    assert change["n"] == len(rows[0]) and change["change"] == pytest.approx(m["accuracy_gain"])
    assert change["gained"] == sum(1 for i in rows[0] if rows[1][i] and not rows[0][i])
    assert change["interval"][0] <= change["change"] <= change["interval"][1]
    assert "paired:" in (run_dir / "report.md").read_text(encoding="utf-8")
    ret = m["retention"]
    assert set(ret) == {"reading.f1", "reading.exact_match"}
    for v in ret.values():  # a tiny base near zero on reading cannot be judged: no ratio, no verdict
        assert v["pass"] == (v["retained"] >= 0.9) if v["base"] >= 5 else v["pass"] is v["retained"] is None


def test_report_shows_verdicts_and_diagnostics(lora_run):
    run_dir, _ = lora_run
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    entry = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["retention"]["reading.f1"]
    want = {True: "PASS", False: "FAIL", None: "cannot judge"}[entry["pass"]]  # the run's own verdict, not any
    line = next(x for x in report.splitlines() if "retention reading.f1" in x)
    assert want in line and not any(w in line for w in ("PASS", "FAIL", "cannot judge") if w != want), line
    assert "| format_ok |" in report and "| int_mul |" in report
    assert "![loss curve](loss.png)" in report
    # the checkpoint table starts where the run started: the base on the same sets
    table = report[report.index("## Every checkpoint"):].splitlines()
    assert table[4].startswith("| base | ") and table[5].startswith("| step-")


def test_resume_of_finished_run_reuses_evaluations(lora_run, capsys):
    run_dir, path = lora_run
    before = (run_dir / "eval" / "base" / "results.json").stat().st_mtime_ns
    assert main(["run", str(path), "--resume"]) == 0
    assert (run_dir / "eval" / "base" / "results.json").stat().st_mtime_ns == before
    assert "best checkpoint" in capsys.readouterr().out


def test_eval_verb_on_a_run_marks_best_and_keeps_run_results(lora_run, tmp_path, capsys):
    run_dir, _ = lora_run
    gold = tmp_path / "dev.jsonl"
    assert main(["data", "arithmetic", "--out", str(gold), "--count", "10", "--kinds", "int_mul"]) == 0
    saved = (run_dir / "eval" / "step-000010" / "results.json").read_text(encoding="utf-8")
    assert main(["eval", "--model", str(run_dir), "--tasks", "arithmetic", "--data", f"arithmetic={gold}"]) == 0
    out = capsys.readouterr().out
    assert out.count("step-0000") == 5 and "*best*" in out
    summary = json.loads((run_dir / "eval-arithmetic" / "results.json").read_text(encoding="utf-8"))
    assert summary["best"] in summary["results"]
    assert (run_dir / "eval" / "step-000010" / "results.json").read_text(encoding="utf-8") == saved


def test_export_merges_best_checkpoint_to_bf16(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    run_dir, _ = lora_run
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert not any("lora_" in n for n, _ in model.named_parameters())
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Measured abilities" in card and "## Recipe" in card
    assert main(["export", str(run_dir), str(out)]) == 2  # never overwrites


@pytest.mark.parametrize("name, body, message", [
    ("metrics.json", "[1]", "metrics.json: expected a JSON object, got list"),         # was an AttributeError
    ("metrics.json", '{"best_checkpoint": "step-000010", "checkpoints": {"step-000010": {"t": {"accuracy": "hi"}}}}',
     "not a tunelab metrics.json (TypeError"),
    ("train_summary.json", '{"steps": 3}', "not a tunelab train_summary.json (KeyError: 'samples')"),
])
def test_export_of_a_run_with_a_damaged_record_names_the_file(lora_run, tmp_path, capsys, name, body, message):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(lora_run[0], run_dir)
    (run_dir / name).write_text(body, encoding="utf-8")
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_data_check_marks_loss_tokens(make_recipe, capsys):
    path = make_recipe("check")
    assert main(["data", "check", str(path), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "⟦" in out and "<|endoftext|>⟧" in out
    assert "packing:" in out and "truncated at max_seq_len" in out


@pytest.mark.parametrize("accuracy_task, says", [
    ("nope", "is not among the eval tasks (arithmetic, reading, addition)"),
    ("reading", "is a reading task, measured by f1 on 0-100"),
])
def test_a_score_that_cannot_be_computed_stops_the_run_before_training(tmp_path, tiny_base, capsys,
                                                                        accuracy_task, says):
    """The score's task is checked with the eval sets, before a step is trained, not after."""
    from conftest import write_recipe
    path = write_recipe(tmp_path, "bad-score", eval=EVAL, score={"formula": "stage1", "accuracy_task": accuracy_task},
                        **lora_sections(tiny_base, max_steps=2))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err and "score.accuracy_task" in err and err.count("\n") == 1
    assert not (tmp_path / "runs" / "bad-score" / "checkpoints").exists()
