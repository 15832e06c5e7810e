"""Runs that survive damaged and moved files: every verb that loads a model turns a weight file cut short, an
adapter moved onto another base, or an unreachable hub base into one `tunelab: error:` line, and a LoRA run
directory loads from anywhere after it is moved (`tunelab.model.weight_files`, `tunelab.model.base_record`).

Real files throughout; the verbs run as real `tunelab` processes, whose whole stderr is the one line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import lora_sections, write_recipe
from test_resume_ddp import _env

from tunelab.cli import main
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from tunelab.train.loop import train


def _tunelab(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], cwd=cwd, env={**_env(), **env},
                          capture_output=True, text=True, timeout=300, check=False)


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process exited 2 with exactly one stderr line, `tunelab: error: …`, holding every one of `words`."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tunelab: error: ") and "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


@pytest.fixture(scope="module")
def lora_run(tiny_base, tmp_path_factory) -> Path:
    """A finished 4-step LoRA run on the tiny base (two checkpoints); tests damage copies of it, never it."""
    path = write_recipe(tmp_path_factory.mktemp("damaged"), "lora",
                        **lora_sections(tiny_base, max_steps=4, num_checkpoints=2))
    recipe = load_recipe(path)
    train(recipe)
    return recipe.run_dir


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _adapter(run: Path) -> Path:
    return list_checkpoints(run)[-1] / "adapter"


# -- A. a damaged or mismatched weight file is one line -------------------------------------------------------

def test_a_truncated_adapter_is_one_line_in_every_loading_verb(lora_run, tmp_path):
    """Each verb given the adapter directory itself (the weight file check), and a checkpoint directory (its
    manifest already names the damage)."""
    run = _copy(lora_run, tmp_path / "run")
    adapter = _adapter(run)
    weights = adapter / "adapter_model.safetensors"
    size = weights.stat().st_size
    _truncate(weights)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"problem": "12+3=", "solution": "15"}]), encoding="utf-8")
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("gj04\t1\t\tThe cat sat.\n", encoding="utf-8")
    verbs = [
        ["eval", "--model", adapter, "--tasks", "arithmetic", "--data", f"arithmetic={data}", "--out", "eval"],
        ["predict", "--model", adapter, "--task", "CoLA", "--data", tsv, "--out", "r.txt"],
        ["export", adapter, "exported"],
        ["generate", adapter, "1+1="],                   # `tunelab serve` and `ui` load through the same path
    ]
    for args in verbs:
        _one_error_line(_tunelab(*args, cwd=tmp_path), f"{weights}: truncated: {size // 2:,} of {size:,} bytes")
    _one_error_line(_tunelab("export", weights.parent.parent, "exported", cwd=tmp_path),
                    f"{weights.parent.parent}: damaged checkpoint: adapter/adapter_model.safetensors: truncated")
    assert not (tmp_path / "exported").exists()


def test_a_truncated_full_model_is_one_line(tiny_base, tmp_path, capsys):
    model = shutil.copytree(tiny_base, tmp_path / "model")
    _truncate(model / "model.safetensors", 0.9)
    assert main(["generate", str(model), "1+1="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tunelab: error: {model / 'model.safetensors'}: truncated: ")


def test_a_truncated_or_missing_shard_is_one_line(tiny_base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    model = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_base).save_pretrained(model, max_shard_size="200KB")
    for f in tiny_base.glob("tokenizer*"):
        shutil.copy(f, model / f.name)
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (model / "model.safetensors").exists()
    _truncate(shards[-1])
    assert main(["generate", str(model), "1+1="]) == 2
    assert capsys.readouterr().err.startswith(f"tunelab: error: {shards[-1]}: truncated: ")
    shards[-1].unlink()
    assert main(["generate", str(model), "1+1="]) == 2
    assert capsys.readouterr().err == (f"tunelab: error: {shards[-1]}: missing: model.safetensors.index.json lists "
                                       "it (a copy that left a shard out?)\n")


def test_a_weight_file_that_is_not_safetensors_is_one_line(tiny_base, tmp_path, capsys):
    model = shutil.copytree(tiny_base, tmp_path / "model")
    (model / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    assert main(["export", str(model), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a safetensors file" in err and "git lfs pull" in err


def _other_base(tiny_base: Path, dest: Path, **changes) -> Path:
    """A base of the tiny base's architecture and tokenizer with `changes` to its config (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(tiny_base)
    for key, value in changes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    for f in tiny_base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dest / f.name)
    return dest


def _point_at(adapter: Path, base: Path) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def test_an_adapter_moved_onto_a_base_of_another_size_is_one_line(lora_run, tiny_base, tmp_path, capsys):
    adapter = _adapter(_copy(lora_run, tmp_path / "run"))
    other = _other_base(tiny_base, tmp_path / "base32", hidden_size=32, intermediate_size=64)
    _point_at(adapter, other)
    assert main(["generate", str(adapter), "1+1="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    hidden = json.loads((tiny_base / "config.json").read_text())["hidden_size"]
    assert err.startswith(f"tunelab: error: {adapter / 'adapter_model.safetensors'}: the adapter does not fit its "
                          f"base {other}: model.layers.0.")
    assert re.search(rf"\.\w+_proj (takes {hidden} inputs|gives {hidden} outputs) in the adapter, 32 in the base "
                     r"\(base hidden_size 32, \d+ more tensors like it\)", err), err
    assert "was it trained on another model?" in err


def test_an_adapter_for_a_deeper_model_is_one_line(lora_run, tiny_base, tmp_path, capsys):
    """peft would load it and silently drop the layers the base lacks."""
    adapter = _adapter(_copy(lora_run, tmp_path / "run"))
    _point_at(adapter, _other_base(tiny_base, tmp_path / "shallow", num_hidden_layers=1))
    assert main(["generate", str(adapter), "1+1="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(r"the adapter does not fit its base .*shallow: model\.layers\.1\.\S+ is in the adapter but "
                     r"not in the base \(base hidden_size \d+, \d+ more tensors like it\)", err), err


def test_what_peft_still_refuses_is_one_line_naming_the_file(lora_run, tmp_path, capsys):
    """The safety net: an adapter_config.json whose rank is not its weights' passes the checks above, and
    peft's "Error(s) in loading state_dict" becomes one line with the tensor that does not fit."""
    adapter = _adapter(_copy(lora_run, tmp_path / "run"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] *= 2
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["export", str(adapter), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tunelab: error: {adapter / 'adapter_model.safetensors'}: the "
                                                    "adapter does not load onto its base ")
    assert "(size mismatch for base_model.model.model.layers.0." in err


# -- B. a run directory loads from anywhere --------------------------------------------------------------------

def test_a_saved_adapter_records_its_base_absolute_and_relative(lora_run, tiny_base):
    for ckpt in list_checkpoints(lora_run):
        adapter = ckpt / "adapter"
        config = json.loads((adapter / "adapter_config.json").read_text())
        record = json.loads((adapter / "base_model.json").read_text())
        assert config["base_model_name_or_path"] == record["absolute"] == str(tiny_base)
        assert not Path(record["relative"]).is_absolute()
        # computed in step-N.tmp/adapter, it holds from the final step-N/adapter
        assert (adapter / record["relative"]).resolve() == tiny_base.resolve()
        manifest = json.loads((ckpt / "manifest.json").read_text())
        assert "adapter/base_model.json" in json.dumps(manifest)


def test_plain_peft_loads_a_saved_adapter(lora_run, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    adapter = _adapter(lora_run)
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    monkeypatch.chdir(tmp_path)   # an absolute base: no matter where from
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_a_run_from_a_relative_model_path_loads_wherever_it_is_moved(tiny_base, tmp_path, monkeypatch, capsys):
    """The recipe says `model.path: models/tiny-base`, relative to the project directory `tunelab` runs in.
    The run moved out alone loads through the absolute path; the whole project moved (the base's old absolute
    path gone) through the path relative to the adapter; both from a third working directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    project = tmp_path / "project"
    shutil.copytree(tiny_base, project / "models" / "tiny-base")
    path = write_recipe(project, "rel", **lora_sections(Path("models/tiny-base"), max_steps=2, num_checkpoints=1))
    path.write_text(path.read_text().replace(str(project / "runs"), "runs"))
    monkeypatch.chdir(project)
    recipe = load_recipe("rel.yaml")
    assert recipe.model.path == "models/tiny-base"
    train(recipe)
    record = json.loads((_adapter(project / "runs" / "rel") / "base_model.json").read_text())
    assert record == {"absolute": str(project / "models" / "tiny-base"),
                      "relative": "../../../../../models/tiny-base"}   # from runs/rel/checkpoints/step-N/adapter
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    adapter = _adapter(project / "runs" / "rel")   # plain peft too, from elsewhere: the base is named absolute
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == record["absolute"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)

    alone = str(shutil.move(project / "runs" / "rel", tmp_path / "moved-run"))
    assert main(["generate", alone, "1+1=", "--max-new-tokens", "2"]) == 0
    shutil.move(alone, project / "runs" / "rel")
    moved = shutil.move(project, tmp_path / "moved-project")
    assert not (project / "models" / "tiny-base").exists()
    assert main(["export", str(Path(moved) / "runs" / "rel"), "exported"]) == 0
    assert (third / "exported" / "model.safetensors").is_file()
    capsys.readouterr()


def test_a_base_in_tunelabs_cache_is_found_in_the_cache_as_it_is_set_now(tiny_base, tmp_path, monkeypatch, capsys):
    """A base tunelab converted (a GGUF, a MindFormers checkpoint) lives in its cache; the cache moved, or emptied
    and filled again elsewhere (`TUNELAB_CACHE`), still holds the same conversion under the same name: a run
    continued from the adapter finds it there."""
    old, new = tmp_path / "cache-a", tmp_path / "cache-b"
    base = old / "converted" / "tiny-0123abcd"
    shutil.copytree(tiny_base, base)
    monkeypatch.setenv("TUNELAB_CACHE", str(old))
    path = write_recipe(tmp_path, "cached", **lora_sections(base, max_steps=2, num_checkpoints=1))
    train(load_recipe(path))
    adapter = _adapter(tmp_path / "runs" / "cached")
    assert json.loads((adapter / "base_model.json").read_text())["cache"] == "converted/tiny-0123abcd"
    shutil.move(old, new)
    monkeypatch.setenv("TUNELAB_CACHE", str(new))
    assert main(["generate", str(tmp_path / "runs" / "cached"), "1+1=", "--max-new-tokens", "2"]) == 0
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "empty"))  # not there either: where it looked, one line
    assert main(["generate", str(tmp_path / "runs" / "cached"), "1+1="]) == 2
    assert str(tmp_path / "empty" / "converted" / "tiny-0123abcd") in capsys.readouterr().err


def test_a_base_recorded_as_local_and_gone_is_model_path_not_found(lora_run, tmp_path, monkeypatch, capsys):
    """The base's recorded absolute path is gone and the relative one leads nowhere (the run moved without
    it): "model path not found", naming where it looked; never a hub attempt."""
    monkeypatch.chdir(tmp_path)
    adapter = _adapter(_copy(lora_run, tmp_path / "run"))
    gone = str(tmp_path / "gone" / "models" / "tiny-base")
    (adapter / "base_model.json").write_text(json.dumps({"absolute": gone, "relative": "../../../../models/tiny-base"}))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = gone
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["generate", str(adapter), "1+1="]) == 2
    err = capsys.readouterr().err
    assert err == (f"tunelab: error: {adapter / 'adapter_config.json'}, field 'base_model_name_or_path': the "
                   f"adapter's base: model path not found (looked for {gone}, {tmp_path / 'models' / 'tiny-base'}); "
                   "copy the base to one of those places, or point base_model_name_or_path at it\n")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_ENDPOINT": "https://127.0.0.1:1", "HTTPS_PROXY": "", "https_proxy": ""}],
                         ids=["HF_HUB_OFFLINE", "unreachable"])
def test_an_uncached_hub_base_offline_is_one_line_at_once(lora_run, tmp_path, env):
    adapter = _adapter(_copy(lora_run, tmp_path / "run"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/not-a-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "base_model.json").write_text(json.dumps({"hub_id": "nobody/not-a-model"}))
    start = time.monotonic()
    proc = _tunelab("generate", adapter, "1+1=", cwd=tmp_path, HF_HOME=str(tmp_path / "hf"), **env)
    took = time.monotonic() - start
    # "at once": no network retries. Measured against the same command failing on a base that is no hub id at all
    # (an absolute path), which asks no network: a loaded host slows both alike, a retry loop only the first
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "base_model.json").write_text(json.dumps({}))
    start = time.monotonic()
    assert _tunelab("generate", adapter, "1+1=", cwd=tmp_path, HF_HOME=str(tmp_path / "hf"), **env).returncode != 0
    assert took < time.monotonic() - start + 8, took
    reason = "HF_HUB_OFFLINE=1 is set" if "HF_HUB_OFFLINE" in env else "127.0.0.1:1 cannot be reached"
    _one_error_line(proc, str(adapter / "adapter_config.json"), "the adapter's base nobody/not-a-model is no directory "
                    "here, and as a hub id it is not in the local Hugging Face cache", reason,
                    "point base_model_name_or_path at a local copy")


def test_an_uncached_hub_model_or_tokenizer_offline_is_one_line(tmp_path, monkeypatch, capsys):
    from tunelab.errors import TunelabError
    from tunelab.model.loading import load_tokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "nobody/not-a-model", "1+1="]) == 2
    assert capsys.readouterr().err == (
        "tunelab: error: model nobody/not-a-model is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is "
        "set: download it where there is network (`hf download nobody/not-a-model`, then copy the cache over), or "
        "give a local copy\n")
    with pytest.raises(TunelabError, match="^tokenizer nobody/not-a-model is not in the local Hugging Face cache"):
        load_tokenizer("nobody/not-a-model")
