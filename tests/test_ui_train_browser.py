"""`tunelab ui`'s Train and Runs tabs in Debian's headless Chromium (Playwright): a path-traversal recipe name is
refused; a tiny recipe picked from the project's recipes/ is checked, started as its own `tunelab run`, its loss
appears; a second Start on the running run shows the lock's refusal; Stop writes a checkpoint and the process
exits 75; Resume trains it to the end; the Runs tab lists it finished, with its report, and exports it as GGUF; two
of its checkpoints are opened in Side by side, both answer one prompt, then battle in the Arena for a vote. With
TUNELAB_SCREENSHOTS=1 the test saves the screenshots docs/serving.md shows (docs/images/ui-train.png,
docs/images/ui-runs.png)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from conftest import recipe_dict
from test_ui_browser import CHROMIUM, CHROMIUM_ARGS, browser_missing

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def train_app(tmp_path, monkeypatch):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.app import build_app, launch
    from tunelab.serve.ui.places import Places
    from tunelab.train.run_lock import writer_pid

    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    # slow enough to be stopped mid-way from the page (a few hundred steps of a micro model), fast to finish
    raw = recipe_dict(project / "runs", "tiny-ui",
                      train={"max_steps": 400, "num_checkpoints": 2, "log_every": 1},
                      eval={"baseline": False, "max_new_tokens": 8,
                            "tasks": [{"task": "arithmetic", "source": {
                                "generate": "arithmetic", "count": 8, "seed": 5,
                                "options": {"kinds": ["int_add"], "int_digits": 1}}}]})
    del raw["output_dir"]  # the default, runs/ under the project the UI starts its runs in: as a user's recipe reads
    (project / "recipes" / "tiny-ui.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    places = Places.of(project, "runs")
    store = ArenaStore(tmp_path / "arena.sqlite")
    demo = build_app({}, store, places=places)
    _, url, _ = launch(demo, port=None, prevent_thread_lock=True, quiet=True)
    run_dir = places.runs / "tiny-ui"
    yield {"url": url, "run_dir": run_dir, "tmp": tmp_path, "store": store}
    pid = writer_pid(run_dir)
    if pid is not None:          # a run the test left going (it failed midway): its own session, so kill it here
        os.kill(pid, signal.SIGKILL)
    demo.close()
    store.close()


def test_browser_train_stop_resume_and_runs(train_app):
    from playwright.sync_api import expect, sync_playwright

    from tunelab.runs import checkpoint_dirs, is_preemption

    expect.set_options(timeout=90_000)
    shots = os.environ.get("TUNELAB_SCREENSHOTS") == "1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(90_000)
        try:
            page.goto(train_app["url"])
            page.get_by_role("tab", name="Train 训练").click()
            check, state, action = page.locator("#train-check"), page.locator("#train-state"), \
                page.locator("#train-action")

            # a path out of the project is refused, and nothing is read
            page.locator("#train-path textarea").fill("recipes/../../../etc/passwd")
            page.locator("#train-load").click()
            expect(check).to_contain_text("not inside the project or runs directory")

            # a shipped recipe picked, checked by the loader on every change
            page.locator("#train-pick input").click()
            page.get_by_role("option", name="recipes/tiny-ui.yaml").click()
            expect(check).to_contain_text("recipe OK")
            expect(check).to_contain_text("runs/tiny-ui")
            page.locator("#train-editor .cm-content").click()
            page.keyboard.press("Control+Home")
            page.keyboard.type("bogus_key: 1\n")
            expect(check).to_contain_text("unknown key")
            page.locator("#train-pick input").click()      # picked again: the file's text back in the editor
            page.get_by_role("option", name="recipes/tiny-ui.yaml").click()
            expect(check).to_contain_text("recipe OK")

            # Start: its own process; the loss appears as it trains
            page.locator("#train-start").click()
            expect(action).to_contain_text("Started PID")
            expect(state).to_contain_text("training")
            expect(state).to_contain_text("loss")
            # the command as a user would type it in the project (the process runs there), not its absolute path
            expect(state).to_contain_text("tunelab run runs/.ui-recipes/tiny-ui.yaml")
            if shots:  # what a user sees once a run trains
                page.screenshot(path=str(DOCS_IMAGES / "ui-train.png"), full_page=True)
            # a second Start on the running run: the run lock's refusal
            page.locator("#train-start").click()
            expect(action).to_contain_text("another tunelab process is writing this run")

            # Stop: a checkpoint, exit 75, resumable
            page.locator("#train-stop").click()
            expect(action).to_contain_text("Sent SIGTERM")
            expect(state).to_contain_text("process exited with 75")
            expect(state).to_contain_text("preempted")
            newest = checkpoint_dirs(train_app["run_dir"])[-1]
            assert is_preemption(newest)
            expect(page.locator("#train-log textarea")).to_have_value(
                re.compile("SIGTERM received: stopped after step"))

            # Resume: to the end, evaluated
            page.locator("#train-resume").click()
            expect(state).to_contain_text("finished", timeout=150_000)
            expect(state).to_contain_text("step 400")

            # the Runs tab lists it finished, with its report and checkpoints
            page.get_by_role("tab", name="Runs 训练记录").click()
            page.locator("#runs-refresh").click()
            expect(page.locator("#runs-table")).to_contain_text("tiny-ui")
            expect(page.locator("#runs-table")).to_contain_text("finished")
            expect(page.locator("#run-report")).to_contain_text("Run report: tiny-ui")
            expect(page.locator("#run-checkpoints")).to_contain_text("step-000400")
            assert page.locator("#run-report img").count() >= 1     # its PNGs, inlined
            if importlib.util.find_spec("gguf") is not None:   # Export: the GGUF file offered for download
                page.locator("button", has_text="Export and hand in").click()
                page.locator("#export-gguf").click()
                expect(page.locator("#export-message")).to_contain_text("exported runs/exports/tiny-ui-f16/")
                expect(page.locator("#export-files")).to_contain_text("tiny-ui-F16")   # name and ".gguf" shown apart
                assert (train_app["run_dir"].parent / "exports" / "tiny-ui-f16" / "tiny-ui-F16.gguf").is_file()
            if shots:
                page.screenshot(path=str(DOCS_IMAGES / "ui-runs.png"), full_page=True)
            compare_in_side_by_side_and_arena(page, expect)
        except Exception:
            page.screenshot(path=str(train_app["tmp"] / "failure.png"), full_page=True)
            print("screenshot:", train_app["tmp"] / "failure.png")
            raise
        finally:
            browser.close()

    pairs = {(v["model_a"], v["model_b"]) for v in train_app["store"].votes()}   # the vote, where `data prefs` reads
    assert [sorted(pair) for pair in pairs] == [["tiny-ui/step-000200", "tiny-ui/step-000400"]]


def compare_in_side_by_side_and_arena(page, expect) -> None:
    """From the Runs tab: two checkpoints of the opened run in Side by side (both answer), then the same two in a
    blind Arena battle, voted on."""
    page.locator("button", has_text="Compare two checkpoints").click()
    for side, step in (("left", "step-000200"), ("right", "step-000400")):
        page.locator(f"#compare-{side} input").click()
        page.locator(f"#compare-{side}").get_by_role("option", name=step).click()
    page.locator("#compare-side").click()
    expect(page.locator("#compare-message")).to_contain_text("Opened tiny-ui/step-000200")
    expect(page.locator("#side-model-a input")).to_have_value("tiny-ui/step-000200")   # its tab, its models
    expect(page.locator("#side-model-b input")).to_have_value("tiny-ui/step-000400")
    page.locator("#side-input textarea").fill("What is 2 + 3?")
    page.locator("#side-send").click()
    for side in "ab":
        expect(page.locator(f"#side-time-{side}")).to_contain_text("⏱")
        expect(page.locator(f"#side-bot-{side}")).to_contain_text("What is 2 + 3?")

    page.get_by_role("tab", name="Runs 训练记录").click()
    page.locator("#compare-arena").click()
    expect(page.locator("#arena-among input")).to_have_value("tiny-ui/step-000200 vs tiny-ui/step-000400")
    page.locator("#arena-input textarea").fill("What is 4 + 1?")
    page.locator("#arena-send").click()
    expect(page.locator("#vote-tie")).to_be_enabled()
    page.locator("#vote-tie").click()
    expect(page.locator("#arena-reveal")).to_contain_text("tiny-ui/step-000200")
    expect(page.locator("#arena-reveal")).to_contain_text("tiny-ui/step-000400")
