"""From a run to the arena without a browser: which of a run's models the Runs tab offers, the names they answer to,
the paths refused, the login, and the bound on models opened at run time (the least recently used one unloaded).
The browser opens two checkpoints in Side by side and battles them in tests/test_ui_train_browser.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import lora_sections, recipe_dict

from tunelab.convert.resolve_model import resolve_model
from tunelab.errors import TunelabError
from tunelab.serve.arena import ArenaStore
from tunelab.serve.backends import BackendError, GenerationSettings
from tunelab.serve.ui.answers import stream_answers
from tunelab.serve.ui.arena import ANY_TWO, draw_pair
from tunelab.serve.ui.context import MAX_OPENED, UIContext, Unloaded
from tunelab.serve.ui.places import LOGIN_NEEDED, OUTSIDE, Places
from tunelab.serve.ui.run_models import BASE, model_choices, model_target, open_pair


class FakeServed:
    """What `UIContext.open_model` keeps of a loaded model, without loading one."""

    def __init__(self, path, name):
        self.model_dir, self.name, self.closed = resolve_model(path).path, name, False

    def close(self):
        self.closed = True


@pytest.fixture
def loads():
    return []


def context(tmp_path, loads, load_model=None) -> UIContext:
    def fake(path, name):
        loads.append((path, name))
        return FakeServed(path, name)
    return UIContext({}, ArenaStore(tmp_path / "arena.sqlite"), ["hi"], 1, 16, True, load_model or fake)


def test_a_runs_checkpoints_open_by_name_and_the_least_recently_used_is_unloaded(scratch_run, tmp_path, loads):
    run_dir = scratch_run["run_dir"]
    places = Places.of(tmp_path, run_dir.parent)
    ctx = context(tmp_path, loads)
    steps = model_choices(places, "scratch")
    assert steps == sorted(p.name for p in (run_dir / "checkpoints").iterdir()) and len(steps) == MAX_OPENED + 1
    assert BASE not in steps                      # trained from scratch: no base to compare with

    assert open_pair(ctx, places, "scratch", steps[0], steps[1]) == (f"scratch/{steps[0]}", f"scratch/{steps[1]}")
    assert loads == [(str(run_dir / "checkpoints" / s), f"scratch/{s}") for s in steps[:2]]
    assert open_pair(ctx, places, "scratch", steps[1], steps[0]) == (f"scratch/{steps[1]}", f"scratch/{steps[0]}")
    assert len(loads) == 2                        # loaded once, whatever the order
    open_pair(ctx, places, "scratch", steps[2], steps[3])
    first = ctx.backends[f"scratch/{steps[0]}"]
    ctx.backend(f"scratch/{steps[1]}")            # used: the least recently used is now steps[0]
    open_pair(ctx, places, "scratch", steps[4], steps[1])
    assert first.served.closed and f"scratch/{steps[0]}" not in ctx.names
    assert ctx.names == [f"scratch/{s}" for s in (steps[1], steps[2], steps[3], steps[4])]
    gone = ctx.backend(f"scratch/{steps[0]}")
    assert isinstance(gone, Unloaded)
    with pytest.raises(BackendError, match="not loaded"):
        gone.chat_stream([{"role": "user", "content": "hi"}], GenerationSettings())

    label = ctx.add_pair(f"scratch/{steps[1]}", f"scratch/{steps[2]}")
    assert ctx.pairs[label] == (f"scratch/{steps[1]}", f"scratch/{steps[2]}")
    open_pair(ctx, places, "scratch", steps[0], steps[3])     # steps[1] unloaded: its pair leaves the arena
    assert label not in ctx.pairs


def test_what_opening_refuses(scratch_run, tmp_path, loads):
    places = Places.of(tmp_path, scratch_run["run_dir"].parent)
    ctx = context(tmp_path, loads)
    steps = model_choices(places, "scratch")
    with pytest.raises(TunelabError, match="two different"):
        open_pair(ctx, places, "scratch", steps[0], steps[0])
    with pytest.raises(TunelabError, match="no base model"):
        open_pair(ctx, places, "scratch", steps[0], BASE)
    with pytest.raises(TunelabError, match="not a checkpoint of the run"):
        open_pair(ctx, places, "scratch", steps[0], "../../scratch")
    with pytest.raises(TunelabError) as e:
        open_pair(ctx, places, "../" + tmp_path.name, steps[0], steps[1])
    assert e.value.message in (OUTSIDE, "not a run of the runs directory")
    with pytest.raises(TunelabError, match="open a run first"):
        open_pair(ctx, places, "", steps[0], steps[1])
    with pytest.raises(TunelabError) as e:
        open_pair(ctx, Places.of(tmp_path, places.runs, actions_allowed=False), "scratch", steps[0], steps[1])
    assert e.value.message == LOGIN_NEEDED
    assert loads == [] and ctx.names == [] and model_choices(places, "../..") == []


def test_a_runs_base_is_offered_where_the_page_may_read_it(tiny_base, tmp_path, loads):
    project = tmp_path / "project"
    shutil.copytree(tiny_base, project / "models" / "base")
    for run, base in (("inside", "models/base"), ("outside", str(tiny_base))):
        raw = recipe_dict(project / "runs", run, **lora_sections(Path(base)))
        (project / "runs" / run / "checkpoints" / "step-000010").mkdir(parents=True)
        (project / "runs" / run / "recipe.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    places = Places.of(project, "runs")
    assert model_choices(places, "inside") == ["step-000010", BASE]
    assert model_target(places, "inside", BASE) == (str(project / "models" / "base"), "inside/base")
    assert model_choices(places, "outside") == ["step-000010"]
    with pytest.raises(TunelabError) as e:
        model_target(places, "outside", BASE)
    assert e.value.message == OUTSIDE


def test_opened_checkpoints_answer_as_local_models(scratch_run, tmp_path):
    """The real loader (`ServedModel.load`, as `tunelab ui MODEL`): both checkpoints answer a prompt."""
    places = Places.of(tmp_path, scratch_run["run_dir"].parent)
    ctx = UIContext({}, ArenaStore(tmp_path / "arena.sqlite"), ["hi"], 1, 8, True)
    steps = model_choices(places, "scratch")
    names = open_pair(ctx, places, "scratch", steps[0], steps[-1])
    try:
        jobs = [(ctx.backend(n), [{"role": "user", "content": "1+1="}], GenerationSettings(temperature=0,
                                                                                          max_tokens=4))
                for n in names]
        *_, last = stream_answers(jobs)
        assert all(a.done and a.error is None for a in last), [a.error for a in last]
        assert ctx.backend(names[0]).describe().startswith("local · ")
    finally:
        for n in names:
            ctx.backend(n).served.close()


def test_a_pair_opened_for_the_arena_is_battled_blind(tmp_path, loads):
    """Battles between an opened pair draw only those two, in either order (which is Model A is not told)."""
    ctx = context(tmp_path, loads)
    ctx.names.extend(["a", "b", "c"])
    label = ctx.add_pair("a", "c")
    assert label == "a vs c"
    drawn = {draw_pair(ctx, label) for _ in range(40)}
    assert drawn == {("a", "c"), ("c", "a")}
    assert {frozenset(draw_pair(ctx, ANY_TWO)) for _ in range(60)} == {frozenset(p) for p in (("a", "b"), ("a", "c"),
                                                                                                ("b", "c"))}
    ctx.names.clear()
    assert draw_pair(ctx, ANY_TWO) is None
