"""docs/preference.md's short CPU path, run as written: the commands of the bash block under "A short CPU path",
in order, in-process through `tunelab.cli.main`, in a temp dir that looks like a clone's root (`recipes/` and
`models/` link to the repository's), `> FILE` writing the command's output to FILE. Each must exit 0, and the
run must be what the doc says: pairs written with the ties counted, at least 10 DPO steps (no few-pairs warning),
the loss falling from ln 2 and the held-out pairs measured."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shlex
from pathlib import Path

import huggingface_hub.constants
import pytest

from tunelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "preference.md"


def cpu_path_commands() -> list[tuple[list[str], str | None]]:
    """(argv after `tunelab`, the file its output is redirected to) of each line of the section's bash block."""
    section = DOC.read_text(encoding="utf-8").split("## A short CPU path\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert len(blocks) == 1, "the short CPU path has one bash block"
    commands = []
    for line in blocks[0].splitlines():
        argv = shlex.split(line)
        assert argv[0] == "tunelab", line
        out = None
        if ">" in argv:
            at = argv.index(">")
            argv, out = argv[:at], argv[at + 1]
        commands.append((argv[1:], out))
    return commands


def test_the_short_cpu_path_runs_as_documented(tmp_path, monkeypatch):
    import torch
    commands = cpu_path_commands()
    assert [argv[0] for argv, _ in commands] == ["data", "generate", "generate", "judge", "data", "train"]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 cores are shared by several test runs: one thread each is fastest here
    try:
        printed = []
        for argv, out in commands:
            buffer, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(err):
                rc = main(argv)
            assert rc == 0, f"`tunelab {shlex.join(argv)}` exited {rc}: {err.getvalue()[-2000:]}"
            if out:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text(buffer.getvalue(), encoding="utf-8")
            printed.append(buffer.getvalue())
    finally:
        torch.set_num_threads(threads)

    data = tmp_path / "runs" / "tiny-dpo-data"
    prefs = json.loads((data / "prefs" / "summary.json").read_text())
    # what the doc prints: nearly every question a pair (the raw answer is never right), the rest ties
    assert prefs["read"] == 64 and prefs["pairs"] >= 50 and prefs["left_out"] == prefs["skipped"].get("judged tie", 0)
    assert f"{prefs['read']} records read, {prefs['pairs']} preference pairs written" in printed[4]
    summary = json.loads((tmp_path / "runs" / "tiny-dpo" / "train_summary.json").read_text())
    assert summary["steps"] >= 10 and "warnings" not in summary
    lines = [json.loads(line) for line in (tmp_path / "runs" / "tiny-dpo" / "metrics.jsonl").open()]
    train_lines = [x for x in lines if "loss" in x]
    assert train_lines[0]["loss"] == pytest.approx(math.log(2), abs=0.01)  # the adapter starts as the reference
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] and train_lines[-1]["rewards/margins"] > 0
    held = [x for x in lines if "val_loss" in x]
    assert held and held[-1]["val_pairs"] == prefs["val"] and held[-1]["val_rewards/accuracies"] > 0.5
