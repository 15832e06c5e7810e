"""Recipes: mistakes are one clear error naming key, file and line; --set overrides; MindFormers aliases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """These recipes have the default relative output_dir: keep anything they might create inside tmp_path."""
    monkeypatch.chdir(tmp_path)


def _write(tmp_path, text: str, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


BASE = """\
name: r
model:
  preset: micro
  from_scratch: true
data:
  train:
    - generate: arithmetic
      count: 10
train:
  lr: 1.0e-3
  batch_size: 2
"""
# the same recipe on a pretrained model (a hub-style id; loading the recipe does not fetch it): LoRA applies
PRETRAINED = BASE.replace("  preset: micro\n  from_scratch: true", "  path: some/model")


def test_valid_recipe_loads(tmp_path):
    r = load_recipe(_write(tmp_path, BASE))
    assert r.name == "r" and r.train.lr == 1e-3 and r.data.train[0].count == 10
    assert not r.lora.enabled  # from scratch: every weight trains


def test_lora_is_on_by_default_for_a_pretrained_model_only(tmp_path):
    assert load_recipe(_write(tmp_path, PRETRAINED)).lora.enabled
    assert load_recipe(_write(tmp_path, BASE + "lora: {rank: 4}\n")).lora.enabled  # asked for: kept


def test_unknown_key_names_key_file_and_line(tmp_path):
    p = _write(tmp_path, BASE.replace("  batch_size: 2", "  batch_sise: 2"))
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "unknown key" in msg and "train.batch_sise" in msg
    assert e.value.file == str(p) and e.value.line == 11
    assert f"{p}:11" in msg


def test_unknown_nested_key_in_a_list_item(tmp_path):
    p = _write(tmp_path, BASE.replace("      count: 10", "      cuont: 10"))
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    assert "cuont" in str(e.value) and e.value.line == 8


def test_line_points_at_the_right_section_when_a_key_name_repeats(tmp_path):
    text = BASE + """eval:
  tasks:
    - task: arithmetic
      source:
        generate: arithmetic
        count: 0
"""
    with pytest.raises(TunelabError) as e:
        load_recipe(_write(tmp_path, text))
    assert e.value.field == "eval.tasks.0.source.count"
    assert e.value.line == 17  # not line 8, the data section's `count`


def test_wrong_type_names_the_key(tmp_path):
    p = _write(tmp_path, BASE.replace("  lr: 1.0e-3", "  lr: fast"))
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    assert e.value.field == "train.lr" and e.value.file == str(p) and e.value.line == 10
    assert "number" in e.value.message


def test_malformed_yaml_names_line(tmp_path):
    p = _write(tmp_path, BASE.replace("  lr: 1.0e-3", "  lr: [1.0e-3"))
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    assert "malformed YAML" in str(e.value) and e.value.line is not None


def test_missing_recipe_file(tmp_path):
    with pytest.raises(TunelabError) as e:
        load_recipe(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


def test_missing_data_file_is_named_at_load_time(tmp_path):
    p = _write(tmp_path, BASE.replace("    - generate: arithmetic\n      count: 10", "    - path: data/missing.jsonl"))
    with pytest.raises(TunelabError) as e:
        load_recipe(p)
    assert "missing.jsonl" in str(e.value) and "not found" in str(e.value)
    assert e.value.field == "data.train.0.path" and e.value.line == 7


def test_relative_data_path_resolves_against_the_recipe_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.jsonl").write_text('{"problem": "1+1=?", "solution": "2"}\n', encoding="utf-8")
    p = _write(tmp_path, BASE.replace("    - generate: arithmetic\n      count: 10", "    - path: data/d.jsonl"))
    monkeypatch.chdir(tmp_path.parent)
    r = load_recipe(p)
    assert r.data.train[0].path == str(tmp_path / "data" / "d.jsonl")


def test_set_overrides(tmp_path):
    r = load_recipe(_write(tmp_path, PRETRAINED), ["train.lr=3e-4", "lora.rank=4", "name=other",
                                             "lora.target_modules=[q_proj, k_proj]"])
    assert r.train.lr == pytest.approx(3e-4) and isinstance(r.train.lr, float)
    assert r.lora.rank == 4 and r.name == "other"
    assert r.lora.target_modules == ["q_proj", "k_proj"]
    assert r.run_dir.name == "other"


@pytest.mark.parametrize("override, field", [("train.lrr=1", "train.lrr"), ("lora.rank=zero", "lora.rank"),
                                             ("lora.rank=0", "lora.rank")])
def test_bad_set_override_names_the_key(tmp_path, override, field):
    with pytest.raises(TunelabError) as e:
        load_recipe(_write(tmp_path, PRETRAINED), [override])
    assert e.value.field == field


CORPUS = BASE.replace("    - generate: arithmetic\n      count: 10", "    - corpus: c\n      build: {inputs: [a.jsonl], "
                                                                   "tokenizer: {out: tok, vocab_size: 4096}}")


@pytest.mark.parametrize("override, field, message", [
    ("train.lr=.inf", "train.lr", "finite number"),                       # once accepted: NaN losses
    ("train.epochs=.inf", "train.epochs", "finite number"),               # once accepted: endless training
    ("lora.alpha=.nan", "lora.alpha", "finite number"),
    ("train.peak_tflops=.inf", "train.peak_tflops", "finite number"),
    ("data.train.0.corpus=", "data.train.0.corpus", "at least 1 character"),  # once read as "."
    ("output_dir=", "output_dir", "at least 1 character"),
    # a union's branches are folded: the branch the input was meant for is named, without pydantic's tags
    ("data.train.0.build.tokenizer.vocab_size=100", "data.train.0.build.tokenizer.vocab_size", "greater than"),
    ("data.train.0.build.tokenizer.bogus=1", "data.train.0.build.tokenizer.bogus", "unknown key"),
    ("data.train.0.build.tokenizer=", "data.train.0.build.tokenizer", "at least 1 character"),
    ("data.train.0.build.tokenizer=5", "data.train.0.build.tokenizer", "valid string; or Input should be a valid "
                                                                       "dictionary"),
    ("lora.target_modules=[q_proj, 1]", "lora.target_modules.1", "valid string"),
    ("name=..", "name", "should match pattern"),                          # runs/.. is the working directory
    ("name=" + "a" * 101, "name", "should match pattern"),               # once an OSError traceback
])
def test_hostile_recipe_values_name_the_key(tmp_path, override, field, message):
    with pytest.raises(TunelabError) as e:
        load_recipe(_write(tmp_path, CORPUS), [override])
    assert e.value.field == field and message in str(e.value) and "more problem" not in str(e.value)


@pytest.mark.parametrize("override", ["train.lr", "=5", "train..lr=1", ".lr=1", " =1"])
def test_set_without_a_key_and_value_is_an_error(tmp_path, override):
    with pytest.raises(TunelabError, match="key=value"):
        load_recipe(_write(tmp_path, BASE), [override])


MINDFORMERS = BASE.replace("train:\n  lr: 1.0e-3\n  batch_size: 2\n", """\
runner_config:
  epochs: 3
  batch_size: 5
pet_config:
  pet_type: lora
  lora_rank: 4
  lora_alpha: 8
  lora_dropout: 0.1
  target_modules: '.*wq|.*wv|.*wo'
""")


def test_mindformers_aliases_map_onto_train_and_lora(tmp_path):
    r = load_recipe(_write(tmp_path, MINDFORMERS))
    assert (r.train.epochs, r.train.batch_size) == (3, 5)
    assert r.lora.enabled and (r.lora.rank, r.lora.alpha, r.lora.dropout) == (4, 8, 0.1)
    assert r.lora.target_modules == ".*q_proj|.*v_proj|.*o_proj"


def test_mindformers_targets_hit_q_v_o_projections(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.model.lora import check_targets_matched, make_lora_config
    from tunelab.model.presets import preset_config
    r = load_recipe(_write(tmp_path, MINDFORMERS))
    model = AutoModelForCausalLM.from_config(preset_config("micro", vocab_size=64))
    check_targets_matched(model, r.lora.target_modules)
    peft_model = get_peft_model(model, make_lora_config(r.lora.rank, r.lora.alpha, r.lora.dropout,
                                                        r.lora.target_modules))
    wrapped = {name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"q_proj", "v_proj", "o_proj"}
    assert len(wrapped) == 3 * model.config.num_hidden_layers
    lora_a = next(m for n, m in peft_model.named_modules() if n.endswith("q_proj")).lora_A["default"]
    assert lora_a.out_features == 4


def test_mindformers_unknown_keys_are_errors(tmp_path):
    with pytest.raises(TunelabError) as e:
        load_recipe(_write(tmp_path, MINDFORMERS.replace("lora_rank", "lora_rnak")))
    assert e.value.field == "pet_config.lora_rnak"
    with pytest.raises(TunelabError, match="pet_type"):
        load_recipe(_write(tmp_path, MINDFORMERS.replace("pet_type: lora", "pet_type: prefix")))


def test_recipe_round_trips_through_yaml(tmp_path):
    from tunelab.recipe import recipe_to_yaml, validate_recipe
    r = load_recipe(_write(tmp_path, MINDFORMERS))
    again = validate_recipe(yaml.safe_load(recipe_to_yaml(r)))
    assert again == r


def test_cli_recipe_typo_exits_2_with_one_line(tmp_path, capsys):
    p = _write(tmp_path, BASE.replace("  batch_size: 2", "  batch_sise: 2"))
    rc = main(["train", str(p)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("tunelab: error:")
    assert "batch_sise" in err and f"{p}:11" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cli_bad_set_exits_2(tmp_path, capsys):
    rc = main(["train", str(_write(tmp_path, BASE)), "--set", "train.lr=-1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "train.lr" in err


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_passes_the_schema(path):
    # the data files of most recipes are written by the commands their headers list, so only the schema is
    # checked here (aliases applied as `load_recipe` does); a recipe edit that breaks a rule fails here
    from tunelab.recipe import validate_recipe
    from tunelab.recipe.loader import _apply_aliases
    text = path.read_text(encoding="utf-8")
    recipe = validate_recipe(_apply_aliases(yaml.safe_load(text), str(path)), path, text)
    if path.name.startswith("minigpt") and path.name.endswith("sft.yaml"):
        assert recipe.data.replay_corpus is not None and recipe.data.corpus is None and recipe.data.template == "sep"


HOSTILE = [None, "", " ", -1, 0, 10 ** 30, 1e308, float("inf"), float("nan"), [], {}, [1, "a"], {"x": 1},
           "a" * 5000, True, "..", "/", "\x00", "💥", 1.5, "1e999", "[unclosed"]


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    yield path


def test_fuzzed_recipes_load_or_name_the_problem(tmp_path):
    """Every shipped recipe with one to three values (sections included) replaced by hostile ones: each either
    loads or is one TunelabError; never another exception. Found: a non-mapping `train:` beside
    `runner_config` (TypeError), a non-list `data.train` (TypeError in a before-validator), a 5,000-character
    path (OSError from the file system)."""
    import copy
    import random
    rng = random.Random(0)
    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    for i in range(400):
        raw = yaml.safe_load(rng.choice(recipes).read_text(encoding="utf-8"))
        # MindFormers aliases are in no shipped recipe: add them now and then, so they are fuzzed too
        if rng.random() < 0.2:
            raw["runner_config"] = {"epochs": 1}
            raw["pet_config"] = {"pet_type": "lora", "lora_rank": 8}
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(list(_leaves(raw)))
            if not path:
                continue
            node = raw
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        p = _write(tmp_path, yaml.safe_dump(raw, allow_unicode=True), f"f{i}.yaml")
        try:
            load_recipe(p)
        except TunelabError:
            pass


def test_a_path_the_file_system_refuses_is_one_line_not_a_traceback(tmp_path, capsys):
    rc = main(["data", "encyclopedia", "--count", "3", "--out", str(tmp_path / ("b" * 300) / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "File name too long" in err and "bbb…" in err


def test_an_older_name_is_mapped_by_the_schema_so_every_reader_sees_the_new_one(tmp_path):
    """`loss_on: answer` (the older name) reads as `assistant` in the validated recipe itself."""
    from tunelab.recipe import load_recipe
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nmodel: {path: org/name}\ndata: {loss_on: answer, train: [{generate: arithmetic}]}\n",
                    encoding="utf-8")
    assert load_recipe(path, check_data=False).data.loss_on == "assistant"
