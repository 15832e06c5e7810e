"""The UI's Runs and Train tabs without a browser: which paths the page accepts, the recipe check's message, each
run's live status, the report with its images inlined, the curves and checkpoint table, the log tail, and the
guards before a run starts (the login, the run lock). The browser drives them in tests/test_ui_train_browser.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import lora_sections, recipe_dict, write_recipe

from tunelab.checkpoint_manifest import write_manifest
from tunelab.compare import read_run
from tunelab.errors import TunelabError
from tunelab.serve.ui.places import LOGIN_NEEDED, OUTSIDE, Places, actions_allowed_for
from tunelab.serve.ui.runs import (FINISHED, PREEMPTED, TRAINING, checkpoint_table, curves, report_markdown,
                                   run_status, runs_overview, step_log)
from tunelab.serve.ui.train import (EDITOR, check_recipe_text, launch_run, log_path, log_tail, read_recipe_file,
                                    recipe_choices, stop_run)
from tunelab.train.run_lock import run_lock, writer_pid

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def places(tmp_path) -> Places:
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "runs").mkdir()
    return Places.of(project, "runs")


# paths ----------------------------------------------------------------------------------------------------------
def test_paths_inside_the_project_or_runs_directory_resolve_and_every_way_out_is_refused(places, tmp_path):
    (places.project / "recipes" / "a.yaml").write_text("name: a\n", encoding="utf-8")
    assert places.confine("recipes/a.yaml") == places.project / "recipes" / "a.yaml"
    assert places.confine(str(places.runs / "x")) == places.runs / "x"       # an absolute path inside is fine
    (places.project / "inner").symlink_to(places.project / "recipes")        # a symlink that stays inside too
    assert places.confine("inner/a.yaml") == places.project / "recipes" / "a.yaml"
    outside = tmp_path / "secret.yaml"
    outside.write_text("k: v\n", encoding="utf-8")
    (places.project / "out").symlink_to(tmp_path)
    (places.project / "loop").symlink_to(places.project / "loop")
    for bad in ("../secret.yaml", "recipes/../../secret.yaml", str(outside), "/etc/passwd", "out/secret.yaml",
                "~/x.yaml", "loop", "a\x00b"):
        with pytest.raises(TunelabError) as e:
            places.confine(bad)
        assert e.value.message == OUTSIDE and e.value.file == bad, bad
    with pytest.raises(TunelabError, match="no path given"):
        places.confine("  ")
    # a runs directory elsewhere (`--runs-dir /data/runs`) is a second place, not a way out of the first
    elsewhere = Places.of(places.project, tmp_path / "other-runs")
    assert elsewhere.confine(str(tmp_path / "other-runs" / "r")) == tmp_path / "other-runs" / "r"
    with pytest.raises(TunelabError):
        elsewhere.confine(str(outside))


def test_recipe_files_the_page_reads(places, tmp_path):
    (places.project / "recipes" / "a.yaml").write_text("name: a\n", encoding="utf-8")
    (places.project / "notes.txt").write_text("private\n", encoding="utf-8")
    (places.runs / "r1").mkdir()
    (places.runs / "r1" / "recipe.yaml").write_text("name: r1\n", encoding="utf-8")
    (places.runs / ".ui-recipes").mkdir()
    (places.runs / ".ui-recipes" / "r1.yaml").write_text("name: r1\n", encoding="utf-8")
    assert recipe_choices(places) == ["recipes/a.yaml", "runs/r1/recipe.yaml"]
    assert read_recipe_file(places, "recipes/a.yaml") == "name: a\n"
    with pytest.raises(TunelabError, match="not a recipe file"):
        read_recipe_file(places, "notes.txt")
    with pytest.raises(TunelabError, match="not inside"):
        read_recipe_file(places, "../" * 8 + "etc/hostname")


def test_actions_need_a_login_beyond_localhost(places):
    assert actions_allowed_for("127.0.0.1", None) and actions_allowed_for("localhost", None)
    assert not actions_allowed_for("0.0.0.0", None) and actions_allowed_for("0.0.0.0", ("u", "p"))
    public = Places.of(places.project, "runs", actions_allowed=False)
    text = yaml.safe_dump(recipe_dict(places.runs, "r"))
    for action in (lambda: launch_run(public, text, resume=False), lambda: stop_run(public, places.runs / "r")):
        with pytest.raises(TunelabError) as e:
            action()
        assert e.value.message == LOGIN_NEEDED
    assert not (places.runs / "r").exists() and not log_path(places.runs / "r").exists()


def test_ui_refuses_a_project_directory_that_is_not_one(tmp_path, capsys):
    pytest.importorskip("gradio")
    from tunelab.cli import main
    assert main(["ui", "--project-dir", str(tmp_path / "none"), "--db", str(tmp_path / "v.sqlite")]) == 2
    assert capsys.readouterr().err == f"tunelab: error: {tmp_path / 'none'}, --project-dir: not a directory\n"


# the recipe check -----------------------------------------------------------------------------------------------
def test_the_editor_is_checked_by_the_recipe_loader_with_line_and_field(places, tmp_path):
    good = recipe_dict(places.runs, "r")
    assert check_recipe_text(places, yaml.safe_dump(good, sort_keys=False)).run_dir == places.runs / "r"
    bad = yaml.safe_dump({**good, "train": {**good["train"], "lr": "fast"}}, sort_keys=False)
    with pytest.raises(TunelabError) as e:
        check_recipe_text(places, bad)
    line = bad.splitlines().index("  lr: fast") + 1
    assert (e.value.file, e.value.line, e.value.field) == (EDITOR, line, "train.lr")
    assert str(e.value).startswith(f"{EDITOR}:{line}, field 'train.lr': ")
    with pytest.raises(TunelabError, match=re.escape(f"{EDITOR}:2: malformed YAML")):
        check_recipe_text(places, "name: r\n  - broken: [\n")
    # the run directory and every local file the recipe names stay inside
    with pytest.raises(TunelabError, match="not inside"):
        check_recipe_text(places, yaml.safe_dump({**good, "output_dir": str(tmp_path / "elsewhere")}))
    data = tmp_path / "stolen.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(TunelabError, match="not inside"):
        check_recipe_text(places, yaml.safe_dump({**good, "data": {**good["data"], "train": [{"path": str(data)}]}}))
    assert not list((places.runs / ".ui-recipes").iterdir())   # the check leaves no file behind


# runs: status, report, curves, checkpoints ---------------------------------------------------------------------
def fake_run(runs: Path, name: str, *, evaluated: bool = False, preempted: bool = False, damaged: bool = False,
             metrics_lines: str = "") -> Path:
    """A run directory as tunelab writes one, without training: recipe.yaml, two checkpoints, maybe metrics."""
    run = runs / name
    for step in (2, 4):
        ckpt = run / "checkpoints" / f"step-{step:06d}"
        (ckpt / "model").mkdir(parents=True)
        (ckpt / "model" / "weights.bin").write_bytes(b"w" * 64)
        state = {"step": step, "val_loss": 1.0 / step, **({"preemption": True} if preempted and step == 4 else {})}
        (ckpt / "state.json").write_text(json.dumps(state), encoding="utf-8")
        write_manifest(ckpt)
    if damaged:
        (run / "checkpoints" / "step-000004" / "model" / "weights.bin").write_bytes(b"w")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "train": {"lr": 0.1}}), encoding="utf-8")
    (run / "metrics.jsonl").write_text(metrics_lines, encoding="utf-8")
    if evaluated:
        results = {c: {"arithmetic": {"accuracy": a, "primary_metric": "accuracy"}}
                   for c, a in (("step-000002", 0.25), ("step-000004", 0.5))}
        (run / "metrics.json").write_text(json.dumps({
            "best_checkpoint": "step-000004", "checkpoints": results, "ratio": {"ratio": 0.01},
            "score": {"value": 0.5}, "checkpoint_scores": {"step-000002": 0.25, "step-000004": 0.5},
            "train": {"steps": 4, "train_seconds": 3.0}}), encoding="utf-8")
        (run / "loss.png").write_bytes(b"\x89PNG fake")
        (run.parent / "outside.png").write_bytes(b"\x89PNG not the run's")
        (run / "report.md").write_text("# Run report\n\n![loss curve](loss.png)\n\n![escape](../outside.png)\n"
                                       "![text](recipe.yaml)\n", encoding="utf-8")
    return run


def test_each_run_shows_its_live_status_in_compares_table(places):
    done = fake_run(places.runs, "done", evaluated=True)
    stopped = fake_run(places.runs, "stopped", preempted=True)
    broken = fake_run(places.runs, "broken", damaged=True)
    plain = fake_run(places.runs, "plain")
    training = fake_run(places.runs, "training")
    assert run_status(read_run(done, "done")) == FINISHED
    assert run_status(read_run(stopped, "stopped")) == PREEMPTED
    assert run_status(read_run(broken, "broken")) == "damaged checkpoint: step-000004"
    assert run_status(read_run(plain, "plain")) == "no evaluation"
    with run_lock(training):
        rows, columns, cells, note = runs_overview(places)
        assert run_status(read_run(training, "training")) == TRAINING
    assert [r.run for r in rows] == ["broken", "done", "plain", "stopped", "training"]
    assert columns[:2] == ["run", "status"] and "score" in columns and "arithmetic/accuracy" in columns
    by_run = {line[0]: dict(zip(columns, line)) for line in cells}
    assert by_run["training"]["status"] == TRAINING and by_run["done"]["score"] == "0.5000"
    assert by_run["done"]["best"] == "step-000004" and by_run["plain"]["score"] == "–"
    assert note == "5 run(s) in `runs`, 1 training"
    assert runs_overview(Places.of(places.project, "nowhere"))[3].startswith("No runs yet")


def test_the_report_inlines_only_the_runs_own_images(places):
    run = fake_run(places.runs, "done", evaluated=True)
    shown = report_markdown(run)
    assert "![loss curve](data:image/png;base64," in shown
    assert "_escape_" in shown and "outside.png" not in shown and "_text_" in shown
    assert report_markdown(fake_run(places.runs, "plain")).startswith("_No report yet")


def test_curves_and_checkpoints_as_the_run_grows(places):
    lines = "".join(json.dumps({"step": s, "loss": 3.0 - s * 0.1, "lr": 1e-3}) + "\n" for s in (1, 2, 3))
    run = fake_run(places.runs, "done", evaluated=True, metrics_lines=lines + '{"step": 4, "lo')  # being written
    assert [r["step"] for r in step_log(run)] == [1, 2, 3]
    loss, lr = curves(run)
    assert list(loss["step"]) == [1, 2, 3] and list(lr["lr"]) == [1e-3] * 3
    headers, rows = checkpoint_table(run)
    assert headers == ["checkpoint", "state", "val_loss", "arithmetic/accuracy", "score", "best"]
    assert rows == [["step-000002", "whole", "0.5000", "0.25", "0.2500", ""],
                    ["step-000004", "whole", "0.2500", "0.5", "0.5000", "★"]]
    stopped = fake_run(places.runs, "stopped", preempted=True)
    assert checkpoint_table(stopped)[1][1][1].startswith("whole: written when the run was stopped")


def test_the_log_tail_shows_a_progress_bar_as_its_last_state(places):
    run = places.runs / "r"
    log_path(run).write_bytes(b"$ tunelab run r.yaml\ntrain r:  10%|# | 1/10 loss=3\rtrain r:  20%|## | 2/10 loss=2\n")
    assert log_tail(run) == "$ tunelab run r.yaml\ntrain r:  20%|## | 2/10 loss=2\n"
    assert log_tail(places.runs / "none") == ""


# starting and stopping -----------------------------------------------------------------------------------------
def test_a_start_on_a_run_another_process_writes_shows_the_locks_refusal(places):
    text = yaml.safe_dump(recipe_dict(places.runs, "r"))
    run = places.runs / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from tunelab.train.run_lock import run_lock\n"
                               "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TunelabError, match=f"another tunelab process is writing this run \\(PID {holder.pid}"):
            launch_run(places, text, resume=False)
        assert not run.exists() and not log_path(run).exists()     # refused before anything was written
        assert writer_pid(run) == holder.pid
        assert "Sent SIGTERM" in stop_run(places, run)              # Stop finds the holder by its lock
        assert holder.wait(10) != 0
    finally:
        holder.kill()
        holder.wait()
    for _ in range(50):
        if writer_pid(run) is None:
            break
        time.sleep(0.1)
    assert stop_run(places, run).startswith("No process is writing this run")


# export and hand-in -----------------------------------------------------------------------------------------------
def test_export_and_handin_write_what_the_cli_writes_inside_the_runs_directory(scratch_run, tmp_path):
    pytest.importorskip("gguf")
    from tunelab.serve.ui.export import export_run
    places = Places.of(tmp_path, scratch_run["run_dir"].parent)
    run = scratch_run["run_dir"].name
    text, files = export_run(places, run, "gguf", "f16")
    out = places.runs / "exports" / f"{run}-f16"
    assert text.startswith(f"exported {out}") and [Path(f).name for f in files] == [f"{run}-F16.gguf", "Modelfile"]
    assert all(Path(f).parent == out for f in files)
    text, files = export_run(places, run, "gguf", "f16")      # the CLI's refusal, in its one line
    assert text == f"⚠️ tunelab: error: {out}: output directory exists and is not empty" and files == []
    text, files = export_run(places, run, "handin")           # a trained-only run is not a submission
    assert text.startswith(f"⚠️ tunelab: error: {scratch_run['run_dir']}: cannot hand in") and files == []
    assert not (places.runs / "handin" / f"{run}.zip").exists()
    for bad in ("../" + run, "/etc"):
        with pytest.raises(TunelabError, match="not inside"):
            export_run(places, bad, "gguf")
    with pytest.raises(TunelabError) as e:
        export_run(Places.of(tmp_path, places.runs, actions_allowed=False), run, "gguf")
    assert e.value.message == LOGIN_NEEDED


def test_handin_of_a_finished_run_is_offered_as_one_zip(tiny_base, tmp_path):
    """The Hand-in button on a run `tunelab handin` accepts: the bundle where the page says (relative to the project, as
    the command run there prints it: runs/handin/lora), and its zip."""
    import zipfile

    from test_handin import EVAL

    from tunelab.cli import main
    from tunelab.serve.ui.export import export_run
    sections = lora_sections(tiny_base, max_steps=10)
    path = write_recipe(tmp_path, "lora", eval=EVAL, score={"formula": "stage1", "total_params": 8.03e9}, **sections)
    assert main(["run", str(path)]) == 0
    places = Places.of(tmp_path, tmp_path / "runs")
    text, files = export_run(places, "lora", "handin")
    bundle = places.runs / "handin" / "lora"
    assert text.startswith(f"hand-in bundle {places.shown(bundle)}: ") and files == [str(places.runs / "handin" / "lora.zip")]
    names = set(zipfile.ZipFile(files[0]).namelist())
    assert "MANIFEST.sha256" in names and "recipe.yaml" in names
    assert not list((places.runs / "handin").glob(".*partial*"))


def test_the_runs_tabs_refresh_sends_only_what_changed(places):
    """The timer's refresh skips every part the page has already (an open dropdown stays open, a sorted table
    sorted) and sends a part again once the run directory changes it."""
    import gradio as gr

    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.app import build_app
    fake_run(places.runs, "done", evaluated=True)
    store = ArenaStore(":memory:")
    demo = build_app({}, store, places=places)
    overview = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "overview")
    def sent_parts(parts):
        return [k for k, part in enumerate(parts) if not (isinstance(part, dict) and part == gr.skip())]
    *first, sent = overview(None, {})
    assert sent_parts(first) == list(range(len(first))) and first[2].value == "done"   # everything, the run picked
    *again, sent = overview("done", sent)
    assert sent_parts(again) == []                                                       # nothing changed: nothing
    with open(places.runs / "done" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 5, "loss": 0.125, "lr": 1e-4}) + "\n")
    *grown, sent = overview("done", sent)
    assert sent_parts(grown) == [4, 5, 6]    # the status line (its step and loss) and the two curves, nothing else
    assert "step 5, loss 0.1250" in grown[4]
    store.close()


def test_every_part_of_the_tab_bar_is_a_tab(places):
    """Every block directly inside the app's `gr.Tabs` is a `gr.Tab`: a component made between two tabs (a
    `gr.State` made after a tab's `with` block) made gradio show the selected tab's button twice."""
    import gradio as gr

    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.app import build_app
    store = ArenaStore(":memory:")
    demo = build_app({}, store, places=places)
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tabs)]
    assert len(tabs) == 1
    children = tabs[0].children
    assert [c.id for c in children] and all(isinstance(c, gr.Tab) for c in children), \
        [type(c).__name__ for c in children]
    assert [c.label.split()[0] for c in children] == ["Chat", "Side", "Arena", "Leaderboard", "Runs", "Train"]
    store.close()
