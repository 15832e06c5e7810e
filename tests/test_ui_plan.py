"""The Train tab's memory plan without a browser: `tunelab plan`'s on the editor's recipe (one line for a tiny
model)."""

from __future__ import annotations

import pytest
import yaml
from conftest import recipe_dict
from test_sweep import EVAL

from tunelab.errors import TunelabError
from tunelab.serve.ui.places import Places
from tunelab.serve.ui.plan import CARDS, plan_text
from tunelab.serve.ui.train import check_recipe_text


@pytest.fixture
def places(tmp_path) -> Places:
    (tmp_path / "project" / "recipes").mkdir(parents=True)
    return Places.of(tmp_path / "project", "runs")


def recipe_text(places: Places, steps: int = 10) -> str:
    raw = recipe_dict(places.runs, "tiny", train={"max_steps": steps, "num_checkpoints": 2, "log_every": 1},
                      eval=EVAL, report_to=[])
    return yaml.safe_dump(raw, sort_keys=False)


def test_the_memory_plan_is_tunelab_plans_on_the_editors_recipe(places, capsys):
    from tunelab.cli import main
    text = recipe_text(places)
    recipe = check_recipe_text(places, text)
    assert plan_text(recipe, "T4 · 16 GiB").startswith("A tiny model: one training step takes ")
    table = plan_text(recipe, "T4 · 16 GiB", tiny=0)            # the table, as the command prints it
    (places.project / "tiny.yaml").write_text(text, encoding="utf-8")
    assert main(["plan", str(places.project / "tiny.yaml"), "--gpu-memory", CARDS["T4 · 16 GiB"]]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert table.startswith("```\n") and table.endswith("\n```")
    assert table.splitlines()[2:-2] == printed[1:-1]              # all but the recipe's file and the trace's time
    assert "FITS" in table and "16.0 GiB" in table
    assert "DOES NOT FIT" in plan_text(recipe, "1MiB", tiny=0)    # a size typed: too small, with the advice
    with pytest.raises(TunelabError, match="expected a memory size"):
        plan_text(recipe, "a big one")
    assert not list((places.runs / ".ui-recipes").glob("*.yaml"))  # the check's file is gone
