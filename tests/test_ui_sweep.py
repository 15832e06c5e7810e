"""The Train tab's sweep without a browser: `tunelab sweep` as its own process started from the page, its log tailed,
refused while it trains, stopped by SIGTERM in one line that says how to continue (`tunelab sweep` again continues
it: tests/test_sweep.py resumes a stopped sweep)."""

from __future__ import annotations

import re
import time

import pytest
from test_ui_plan import places, recipe_text  # noqa: F401 - the fixture, and the tiny recipe

from tunelab.errors import TunelabError
from tunelab.serve.ui.places import LOGIN_NEEDED, Places
from tunelab.serve.ui.sweep import launch_sweep, stop_sweep, sweep_state, sweep_writer
from tunelab.serve.ui.train import log_tail


def test_a_sweep_from_the_page_runs_is_refused_twice_and_stops_in_one_line(places):
    text = recipe_text(places, steps=400)
    space = "train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    with pytest.raises(TunelabError, match="space is empty"):
        launch_sweep(places, text, " ", 2)
    with pytest.raises(TunelabError) as e:
        launch_sweep(Places.of(places.project, "runs", actions_allowed=False), text, space, 2)
    assert e.value.message == LOGIN_NEEDED
    sweep_dir, process = launch_sweep(places, text, space, 2)
    try:
        assert sweep_dir == places.runs / "tiny-sweep"
        deadline = time.monotonic() + 240
        while not (sweep_writer(sweep_dir) and (sweep_dir / "trial-000" / "metrics.jsonl").is_file()):
            assert process.poll() is None and time.monotonic() < deadline, log_tail(sweep_dir)
            time.sleep(0.2)
        assert sweep_state(sweep_dir, process).startswith("**sweeping 搜索中** · 1 trial run(s) · trial-000: ")
        with pytest.raises(TunelabError, match="a sweep is training here already"):
            launch_sweep(places, text, space, 2)
        assert stop_sweep(places, sweep_dir, process).startswith(f"Sent SIGTERM to PID {process.pid}")
        assert process.wait(timeout=120) == 75
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    tail = log_tail(sweep_dir).strip().splitlines()
    assert tail[0] == "$ tunelab sweep runs/.ui-recipes/tiny.yaml --space runs/.ui-recipes/tiny.space.yaml --trials 2"
    said = (re.escape(f"tunelab: stopped: {sweep_dir / 'trial-000'}: SIGTERM received: stopped after step ") +
            r"\d+ of 400, checkpoint step-\d+ is written; " +
            # the command as the process was given it: relative to the project it runs in
            re.escape("continue with: tunelab sweep runs/.ui-recipes/tiny.yaml --space runs/.ui-recipes/tiny.space.yaml "
                      "--trials 2"))
    assert re.fullmatch(said, tail[-1]), tail[-1]
    assert "Traceback" not in "\n".join(tail)
    assert sweep_state(sweep_dir, process) == "1 trial run(s) in `tiny-sweep` · process exited with 75"
    assert stop_sweep(places, sweep_dir, process).startswith("No sweep is running here")
