"""One reader per kind of run file (issue 66 item 3): metrics.jsonl by `tunelab.runs.read_metrics` and its one rule
for a bad line, the best checkpoint's results by `best_results`, a retention entry's verdict by `verdict` /
`overall`, the chosen adapter scale by `tunelab.model.lora_scale.asked_scale` — each used by every stage that
reads them, never a copy of its own."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.runs import best_results, overall, read_metrics, verdict


def _lines(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)


def test_a_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for bad in ('{"step": 2, "lo\n', '[1, 2]\n', '{"loss": 0.5}\n', '{"step": "2"}\n'):
        path.write_text(_lines(1) + bad + _lines(3), encoding="utf-8")
        with pytest.raises(TunelabError) as e:
            read_metrics(path)
        assert (e.value.file, e.value.line) == (str(path), 2) and f"{path}:2" in str(e.value)
    path.write_bytes(_lines(1).encode() + b'{"step": 2, "note": "\xff"}\n' + _lines(3).encode())  # bad bytes too
    with pytest.raises(TunelabError) as e:
        read_metrics(path)
    assert e.value.line == 2


def test_the_last_line_being_written_is_left_out(tmp_path):
    """Only the last line can lack its newline (the trainer appends a line and its newline in one write): cut
    short, it is left out, even cut inside a UTF-8 character; whole, it is read; with its newline, a damaged last
    line is damage like any other."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines(1, 2) + '{"step": 3, "lo', encoding="utf-8")
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_bytes(_lines(1, 2).encode() + '{"step": 3, "note": "é'.encode()[:-1])
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text(_lines(1, 2) + '{"step": 3}', encoding="utf-8")
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    path.write_text(_lines(1, 2) + '{"step": 3, "lo\n', encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        read_metrics(path)
    assert e.value.line == 3
    path.write_text('{"step": 1', encoding="utf-8")
    assert read_metrics(path) == []
    assert read_metrics(tmp_path / "none.jsonl") == []


def test_every_metrics_jsonl_reader_is_the_one(tmp_path):
    """The plots, the summary, resume, the course's rewards and the UI's live curves read through it."""
    from tunelab import runs
    from tunelab.pipeline import course, course_rewards  # noqa: F401  (course_rewards imports it lazily)
    from tunelab.serve.ui import runs as ui_runs
    from tunelab.train import loop, plots, summary
    for module in (plots, loop, summary, course, ui_runs):
        assert module.read_metrics is runs.read_metrics, module.__name__
    (tmp_path / "metrics.jsonl").write_text(_lines(1, 2) + '{"step": 3, "lo', encoding="utf-8")
    assert [r["step"] for r in ui_runs.step_log(tmp_path)] == [1, 2]


def test_the_runs_tab_says_a_damaged_log_and_still_opens_the_run(tmp_path):
    from tunelab.serve.ui.places import Places
    from tunelab.serve.ui.runs import run_detail
    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(_lines(1) + "not json\n" + _lines(3), encoding="utf-8")
    status, loss, lr, _, report = run_detail(Places.of(tmp_path, "runs"), "broken")
    assert "⚠️" in status and "metrics.jsonl:2" in status
    assert loss is None and lr is None and report.startswith("_No report yet")


def test_best_results_is_one_rule_for_every_reader():
    metrics = {"best_checkpoint": "step-2", "checkpoints": {"step-1": {"a": {"accuracy": 0.1}},
                                                            "step-2": {"a": {"accuracy": 0.2}}}}
    assert best_results(metrics) == {"a": {"accuracy": 0.2}}
    assert best_results({"best_checkpoint": "step-2", "checkpoints": {"step-2": None}}) == {}
    assert best_results({"best_checkpoint": None}) == {} == best_results({})
    from tunelab import compare, report, runs
    from tunelab.convert import export
    from tunelab.pipeline import course, pretraining
    from tunelab.sweep import objective
    for module in (compare, export, objective, course, pretraining):
        assert module.best_results is runs.best_results, module.__name__
    assert not hasattr(report, "best_results")


def test_export_reads_the_retention_verdicts_evaluation_wrote(tmp_path):
    """The model card's retention lines are the evaluation's verdicts (`tunelab.eval.retention`'s `verdict` and
    `overall`, one implementation in tunelab.runs), its cannot-judge reason included, not a rebuilt PASS/FAIL."""
    from tunelab.convert.export import model_card
    from tunelab.eval import retention
    assert retention.verdict is verdict and retention.overall is overall
    entries = {"reading.f1": {"base": 80.0, "tuned": 78.0, "retained": 0.975, "pass": True, "scorer": None},
               "reading.exact_match": {"base": 0.0, "tuned": 3.0, "retained": None, "pass": None, "scorer": None,
                                       "verdict": "cannot judge: the base scores 0.00 on reading.exact_match"}}
    frontier = {"checkpoint": "step-000004", "accuracy_task": "arithmetic.accuracy", "chosen": 0.5,
                "points": [{"scale": 0.5, "accuracy": 0.4, "score": 1.0,
                            "retention": {"verdict": overall(entries), "entries": entries}}]}
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000004" / "adapter").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "step-000004", "scale_frontier": frontier,
                                                  "checkpoints": {"step-000004": {}}}), encoding="utf-8")
    card = model_card(run, run / "checkpoints" / "step-000004" / "adapter", 0.5)
    assert "- retention: cannot judge\n" in card
    assert "- retention reading.f1: 97.5% of the base's, PASS" in card
    assert "- retention reading.exact_match: cannot judge: the base scores 0.00 on reading.exact_match" in card


def test_the_chosen_scale_is_looked_up_once():
    """`tunelab export --scale` and `tunelab handin --scale` ask the one lookup, with the same errors."""
    from tunelab.model.lora_scale import asked_scale
    frontier = {"checkpoint": "step-4", "chosen": 0.5, "points": []}
    assert asked_scale(None, frontier) is None
    assert asked_scale("chosen", frontier) == 0.5 and asked_scale("0.25", None) == 0.25
    for scale, given, message in (("chosen", None, "this run has none"),
                                  ("chosen", {**frontier, "chosen": None}, "none was chosen"),
                                  ("half", frontier, "a number in (0, 1] or 'chosen'"),
                                  ("1.5", frontier, "above 0 and at most 1")):
        with pytest.raises(TunelabError) as e:
            asked_scale(scale, given)
        assert message in str(e.value) and e.value.field == "scale"
    from tunelab.handin import frontier_point
    point = {"scale": 0.5, "accuracy": 0.4}
    assert frontier_point({"scale_frontier": {**frontier, "points": [point]}}, "chosen") is point
    with pytest.raises(TunelabError, match="none was chosen"):
        frontier_point({"scale_frontier": {**frontier, "chosen": None, "points": [point]}}, "chosen")
