"""docs/cli.md is the parser's own `--help` for every verb: regenerated, it must equal the file in the tree."""

from __future__ import annotations

from pathlib import Path

from tunelab.cli import build_parser, cli_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_command_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == cli_markdown(), (
        "docs/cli.md is out of date: python -c \"from tunelab.cli import cli_markdown; "
        "print(cli_markdown(), end='')\" > docs/cli.md")


def test_it_holds_every_verb_and_action():
    text = DOC.read_text(encoding="utf-8")
    top = next(a for a in build_parser()._actions if a.dest == "verb")
    for verb, sub in top.choices.items():
        assert f"`tunelab {verb}`" in text, verb
        for action in sub._actions:
            for name in getattr(action, "choices", None) or {}:
                if action.__class__.__name__ == "_SubParsersAction":
                    assert f"`tunelab {verb} {name}`" in text, (verb, name)
