"""Errors keep their cause for maintainers: the CLI prints one line, `--debug` / TUNELAB_DEBUG=1 the whole chain."""

from __future__ import annotations

from tunelab.cli import main


def _bad_recipe(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: {epochs: [1\n", encoding="utf-8")  # an unclosed flow sequence
    return path


def test_one_line_without_debug(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNELAB_DEBUG", raising=False)
    assert main(["run", str(_bad_recipe(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tunelab: error: ") and "bad.yaml" in err
    assert "Traceback" not in err


def test_debug_prints_the_traceback_and_its_cause_then_the_same_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNELAB_DEBUG", raising=False)
    bad = _bad_recipe(tmp_path)
    assert main(["run", str(bad)]) == 2
    line = capsys.readouterr().err
    assert main(["--debug", "run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "yaml" in err.lower()
    assert "The above exception was the direct cause of the following exception" in err
    assert err.endswith(line)
    monkeypatch.setenv("TUNELAB_DEBUG", "1")
    assert main(["run", str(bad)]) == 2
    assert capsys.readouterr().err == err
