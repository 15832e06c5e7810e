"""`tunelab runs table`: one real `tunelab run` and hand-made run directories beside it (a bigger rank with a
Chinese name, a pretraining run, a run only trained, one with a damaged metrics.json) read into one table."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import yaml

from conftest import lora_sections, write_recipe
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.compare import (collect_runs, display_width, format_table, pareto_front, plot_score_vs_ratio,
                             sort_rows, table, write_csv)

EVAL = {"baseline": True, "batch_size": 16, "max_new_tokens": 8, "tasks": [
    {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                      "options": {"kinds": ["int_mul"], "int_digits": 2}}},
    {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True}]}
WIDE = "中文-秩16"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base):
    """runs/: lora (real), 中文-秩16 (rank 16, a Chinese prefix, retention FAIL, the best score),
    course/pre (pretraining), course/trained (train_summary.json only), broken (metrics.json cut short)."""
    root = tmp_path_factory.mktemp("compare")
    path = write_recipe(root, "lora", eval=EVAL, score={"formula": "stage1", "total_params": 8.03e9},
                        **lora_sections(tiny_base, max_steps=4))
    assert main(["run", str(path)]) == 0
    runs = root / "runs"
    real = runs / "lora"
    recipe = yaml.safe_load((real / "recipe.yaml").read_text(encoding="utf-8"))
    metrics = json.loads((real / "metrics.json").read_text(encoding="utf-8"))

    def make(name: str, recipe: dict, metrics: dict | None = None, **files: str) -> None:
        d = runs / name
        d.mkdir(parents=True)
        (d / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        if metrics is not None:
            (d / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")
        for file, text in files.items():
            (d / file.replace("_json", ".json")).write_text(text, encoding="utf-8")

    wide = copy.deepcopy(recipe)
    wide.update(name=WIDE, description="秩更大的一次运行", report_to=[])
    wide["lora"]["rank"] = 16
    wide["data"]["instruction_prefix"] = "请回答："
    best = copy.deepcopy(metrics)
    best["score"]["value"] = 0.9
    best["ratio"]["ratio"] = 1e-6
    best["retention"] = {"reading.f1": {"base": 50.0, "tuned": 40.0, "retained": 0.8, "pass": False}}
    best["checkpoints"][best["best_checkpoint"]]["arithmetic"]["accuracy"] = 0.75
    make(WIDE, wide, best)
    pre = copy.deepcopy(recipe)
    pre["lora"]["rank"] = 8
    pre_metrics = {"name": "pre", "pretraining": True, "train": {"steps": 200, "train_seconds": 754.0},
                   "best_checkpoint": "step-000200", "best_val_loss": 2.0,
                   "checkpoints": {"step-000200": {"ppl": {"perplexity": 7.39, "primary_metric": "perplexity"}}}}
    make("course/pre", pre, pre_metrics)
    trained = copy.deepcopy(recipe)
    trained["train"]["lr"] = 0.003
    make("course/trained", trained, train_summary_json=json.dumps(
        {"steps": 30, "train_seconds": 4000.0, "best_checkpoint": None, "best_val_loss": None}))
    make("broken", recipe, metrics_json='{"name": ')
    (runs / "notes").mkdir()  # not a run: no recipe.yaml
    return runs


def by_name(rows):
    return {r.run: r for r in rows}


def test_every_run_is_a_row_whatever_it_holds(runs, caplog):
    rows = by_name(collect_runs(runs))
    assert sorted(rows) == sorted(["lora", WIDE, "course/pre", "course/trained", "broken"])
    real = json.loads((runs / "lora" / "metrics.json").read_text(encoding="utf-8"))
    lora = rows["lora"]
    assert lora.status == "evaluated" and lora.best == real["best_checkpoint"]
    assert lora.score == real["score"]["value"] and lora.ratio == real["ratio"]["ratio"]
    from tunelab.eval.retention import overall
    # a tiny run's base may score near zero on reading: then its retention cannot be judged, never a PASS
    assert set(lora.tasks) == {"arithmetic/accuracy", "reading/f1"} and lora.retention == overall(real["retention"])
    assert lora.retention in ("PASS", "FAIL", "cannot judge")
    assert lora.steps == 4 and lora.train_seconds == real["train"]["train_seconds"]
    assert rows[WIDE].retention == "FAIL" and rows[WIDE].tasks["arithmetic/accuracy"] == 0.75
    pre = rows["course/pre"]
    assert (pre.score, pre.ratio, pre.val_loss) == (None, None, 2.0) and pre.perplexity == pytest.approx(math.exp(2))
    assert pre.tasks == {"ppl/perplexity": 7.39}
    trained = rows["course/trained"]
    assert trained.status == "no evaluation" and (trained.steps, trained.train_seconds) == (30, 4000.0)
    assert rows["broken"].status == "unreadable: metrics.json" and rows["broken"].recipe["lora"]["rank"] == 4
    assert "broken/metrics.json:1: malformed JSON" in caplog.text


def test_only_the_recipe_keys_that_differ_are_columns(runs):
    columns, _ = table(collect_runs(runs))
    keys = columns[columns.index("status") + 1:columns.index("best")]
    assert keys == ["data.instruction_prefix", "lora.rank", "train.lr"]  # not name, description or report_to


def test_sorting_by_score_by_a_recipe_key_and_by_nothing_known(runs):
    rows = collect_runs(runs)
    order = [r.run for r in sort_rows(rows)]
    assert order[:2] == [WIDE, "lora"] and set(order[2:]) == {"course/pre", "course/trained", "broken"}
    assert [r.run for r in sort_rows(rows, "score", descending=False)][:2] == ["lora", WIDE]  # blanks still last
    ranks = [r.recipe["lora"]["rank"] for r in sort_rows(rows, "lora.rank", descending=False)]
    assert ranks == [4, 4, 4, 8, 16]  # as numbers: 16 after 8
    assert [r.run for r in sort_rows(rows, "wall_time")][0] == "course/trained"
    with pytest.raises(TunelabError, match=r"no column 'rank' to sort by; the columns are: run, status, "
                                        r"data\.instruction_prefix, lora\.rank"):
        sort_rows(rows, "rank")


def test_the_text_table_lines_up_chinese_too(runs):
    rows = sort_rows(collect_runs(runs))
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["run", "status", "data.instruction_prefix", "lora.rank", "train.lr", "best"]
    assert lines[2].startswith(WIDE) and "请回答：" in lines[2] and "FAIL" in lines[2] and "0.9000" in lines[2]
    for column in ("status", "data.instruction_prefix", "best", "retention"):  # left-aligned: all start together
        start = display_width(lines[0][:lines[0].index(column)])
        for line in lines[2:]:
            cut = next(i for i in range(len(line) + 1) if display_width(line[:i]) >= start)
            assert display_width(line[:cut]) == start and line[cut - 2:cut] == "  ", (column, line)
    assert "12m34s" in text and "1h06m" in text and "7.39" in text  # wall times; the pretraining run's perplexity


def test_csv_reads_back_with_unrounded_numbers(runs, tmp_path):
    rows = sort_rows(collect_runs(runs))
    out = write_csv(rows, tmp_path / "runs.csv")
    with open(out, encoding="utf-8-sig", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r.run for r in rows]
    assert (table[0]["run"], table[0]["data.instruction_prefix"], table[0]["score"]) == (WIDE, "请回答：", "0.9")
    assert table[1]["score"] == repr(rows[1].score) and table[1]["wall_time"] == repr(rows[1].train_seconds)
    pre = next(r for r in table if r["run"] == "course/pre")
    assert pre["score"] == "" and pre["val_loss"] == "2.0" and pre["ppl/perplexity"] == "7.39"


def test_pareto_front_keeps_what_nothing_beats():
    points = [(0.5, 0.6), (0.1, 0.5), (0.1, 0.4), (0.3, 0.5), (0.9, 0.8), (0.7, 0.7), (0.8, 0.65), (0.1, 0.5)]
    assert pareto_front(points) == [(0.1, 0.5), (0.5, 0.6), (0.7, 0.7), (0.9, 0.8)]
    assert pareto_front([(0.2, 0.9), (0.5, 0.3)]) == [(0.2, 0.9)]
    assert pareto_front([]) == []


def test_a_run_that_failed_retention_is_not_on_the_front(tmp_path):
    from tunelab.compare import RunRow, feasible_front
    rows = [RunRow("a", tmp_path, "evaluated", ratio=0.1, score=0.7, retention="PASS"),
            RunRow("b", tmp_path, "evaluated", ratio=0.05, score=0.9, retention="FAIL"),
            RunRow("c", tmp_path, "evaluated", ratio=0.2, score=0.8, retention=None),
            RunRow("d", tmp_path, "no evaluation")]
    assert feasible_front(rows) == [(0.1, 0.7), (0.2, 0.8)]


def test_the_plot_is_a_png(runs, tmp_path):
    out = plot_score_vs_ratio(collect_runs(runs), tmp_path / "plot" / "score.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["score.png"]  # no temporary file left behind


def test_cli_table_csv_png_and_its_errors(runs, tmp_path, capsys):
    assert main(["runs", "table", str(runs), "--sort", "lora.rank", "--csv", str(tmp_path / "t.csv"),
                 "--png", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith(WIDE) and f"5 run(s) under {runs}, by lora.rank highest first" in out
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t.png").is_file()
    assert main(["runs", "table", str(runs), "--sort", "nope"]) == 2
    err = capsys.readouterr().err  # the damaged run's warning, then the one error line
    assert err.count("error:") == 1 and err.splitlines()[-1].startswith(
        "tunelab: error: --sort: no column 'nope' to sort by; the columns are: run, status")
    (tmp_path / "empty").mkdir()
    assert main(["runs", "table", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == f"no runs under {tmp_path / 'empty'} (a run directory holds a recipe.yaml)\n"
    assert main(["runs", "table", str(runs / "course"), "--png", str(tmp_path / "none.png")]) == 2
    assert "no run here has a score and a ratio to plot" in capsys.readouterr().err
    assert main(["runs", "table", str(tmp_path / "missing")]) == 2


def test_a_hand_in_bundle_beside_the_runs_is_not_a_run(tmp_path):
    """`tunelab handin` copies recipe.yaml into its bundle, with a MANIFEST.sha256 of its files: not a run."""
    from tunelab.compare import collect_runs
    for name, extra in (("a-run", None), ("bundle", "MANIFEST.sha256")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.yaml").write_text("name: x\n", encoding="utf-8")
        if extra:
            (tmp_path / name / extra).write_text("", encoding="utf-8")
    assert [row.run for row in collect_runs(tmp_path)] == ["a-run"]
