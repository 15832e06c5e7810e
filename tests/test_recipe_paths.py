"""Relative paths in a recipe resolve as docs/recipes.md says: beside the recipe first, else the working
directory's (a run directory another recipe wrote), else as written (a hub name)."""

from __future__ import annotations

from pathlib import Path

from tunelab.recipe import load_recipe


def _recipe(folder: Path, data: str, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.yaml"
    path.write_text(f"name: r\nmodel: {{path: {model}}}\ndata:\n  train:\n    - {{path: {data}}}\n", encoding="utf-8")
    return path


def test_the_recipes_folder_wins_over_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for where in (tmp_path, tmp_path / "recipes"):
        where.mkdir(exist_ok=True)
        (where / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    recipe = load_recipe(_recipe(tmp_path / "recipes", "train.jsonl", "org/name"), check_data=False)
    assert Path(recipe.data.train[0].path) == tmp_path / "recipes" / "train.jsonl"
    assert recipe.model.path == "org/name"  # a hub id: as written


def test_a_path_only_the_working_directory_has_is_its(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "base").mkdir(parents=True)
    (tmp_path / "only-here.jsonl").write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    recipe = load_recipe(_recipe(tmp_path / "recipes", "only-here.jsonl", "runs/base"), check_data=False)
    assert recipe.data.train[0].path == "only-here.jsonl"
    assert recipe.model.path == "runs/base"
