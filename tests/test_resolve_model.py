"""One way to turn a named model into a loadable one (`tunelab.convert.resolve_model`): each kind once — a run
(its best checkpoint), a checkpoint, an adapter (its base apart), a merged model, a GGUF file, a MindFormers .ckpt,
a hub id, a path that is nothing — and every verb that takes a model going through it (prepare, plan, data
check, eval, serve). Tiny random models built here; no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from conftest import write_recipe  # noqa: E402
from tiny_archs import build_smol  # noqa: E402

import tunelab.convert.resolve_model as resolver  # noqa: E402
from tunelab.convert.resolve_model import GGUF, MINDFORMERS_CKPT, resolve_model  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny base, a LoRA adapter on it (its base recorded as a run records it), and a run whose best
    checkpoint (by metrics.json) is the adapter and whose last is a merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.model.base_record import record_base_model
    root = tmp_path_factory.mktemp("models")
    base = build_smol(root / "base")
    adapter = root / "adapter"
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)   # as a run saves one with its adapter
    record_base_model(adapter, str(base))
    run = root / "run"
    for step, kind, src in ((10, "adapter", adapter), (20, "model", base)):
        ckpt = run / "checkpoints" / f"step-{step:06d}"
        (ckpt / kind).mkdir(parents=True)
        for f in src.iterdir():
            (ckpt / kind / f.name).write_bytes(f.read_bytes())
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "step-000010"}))
    return {"base": base, "adapter": adapter, "run": run}


def test_a_run_gives_its_best_checkpoint_and_an_adapter_its_base_apart(models):
    run, base = models["run"], str(models["base"])
    best = resolve_model(run)
    assert best.adapter == run / "checkpoints" / "step-000010" / "adapter" and best.path == str(best.adapter)
    assert best.base == base and best.run == run and best.checkpoint == "step-000010" and best.converted is None
    last = resolve_model(run, which="last")
    assert last.adapter is None and last.base == last.path == str(run / "checkpoints" / "step-000020" / "model")
    assert last.checkpoint == last.label == "step-000020"


def test_a_checkpoint_an_adapter_and_a_model_directory(models):
    ckpt = models["run"] / "checkpoints" / "step-000020"
    one = resolve_model(ckpt)
    assert (one.path, one.adapter, one.run, one.checkpoint) == (str(ckpt / "model"), None, None, "step-000020")
    adapter = resolve_model(models["adapter"])
    assert adapter.adapter == models["adapter"] and adapter.base == str(models["base"]) and adapter.run is None
    merged = resolve_model(models["base"])
    assert merged.base == merged.path == str(models["base"]) and merged.adapter is None and merged.label == "base"


def test_a_hub_id_stays_one_and_a_missing_path_is_one_error(tmp_path):
    hub = resolve_model("someorg/somemodel")
    assert hub.base == hub.path == "someorg/somemodel" and not hub.local and hub.label == "somemodel"
    with pytest.raises(TunelabError) as e:
        resolve_model(tmp_path / "nowhere", field="model")
    assert "model not found" in e.value.message and e.value.file == str(tmp_path / "nowhere")
    assert e.value.field == "model"


@pytest.fixture(scope="module")
def gguf_file(models, tmp_path_factory) -> Path:
    pytest.importorskip("gguf")
    from tunelab.convert.export import export_gguf_dir
    return export_gguf_dir(models["base"], tmp_path_factory.mktemp("gguf"), "f32").path


def test_a_gguf_file_converted_once_and_other_ranks_wait_for_it(gguf_file, monkeypatch):
    monkeypatch.setattr(resolver, "_WAIT_SECONDS", 0.0)
    with pytest.raises(TunelabError, match="rank 0 did not finish"):   # nothing converted yet: not this rank's job
        resolve_model(gguf_file, convert=False)
    got = resolve_model(gguf_file)
    assert got.converted == GGUF and (Path(got.base) / "config.json").is_file() and got.adapter is None
    assert got.label == gguf_file.stem
    assert resolve_model(gguf_file, convert=False).base == got.base   # another rank: the same directory


def test_prepare_resolves_a_gguf_on_every_rank(gguf_file, tmp_path, monkeypatch):
    """Under torchrun rank 0 converts; the others now load the same converted directory (they kept the .gguf
    path, which nothing could load)."""
    from tunelab.pipeline.prepare import resolve_base_run
    from tunelab.recipe import load_recipe
    model = {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(gguf_file)}
    paths = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        recipe = load_recipe(write_recipe(tmp_path, f"r{rank}", model=model), check_data=False)
        assert resolve_base_run(recipe) is None
        paths[rank] = recipe.model.path
    assert paths["0"] == paths["1"] == resolve_model(gguf_file).base


@pytest.fixture
def mindformers_ckpt(models, tmp_path) -> dict[str, Path]:
    from tunelab.convert.mindformers import hf_to_mindspore, mindformers_model_config
    folder = tmp_path / "organisers"
    folder.mkdir()
    hf_to_mindspore(models["base"], folder / "base.ckpt")
    cfg = json.loads((models["base"] / "config.json").read_text())
    (folder / "predict.yaml").write_text(yaml.safe_dump({"model": {"model_config": mindformers_model_config(cfg)}}))
    return {"ckpt": folder / "base.ckpt", "config": folder / "predict.yaml", "tokenizer": models["base"]}


def test_a_mindformers_ckpt_with_its_yaml_and_a_tokenizer(mindformers_ckpt, models):
    from safetensors.torch import load_file
    ckpt, config = mindformers_ckpt["ckpt"], mindformers_ckpt["config"]
    with pytest.raises(TunelabError) as e:
        resolve_model(ckpt)
    assert "MindFormers YAML" in e.value.message and e.value.file == str(ckpt)
    with pytest.raises(TunelabError) as e:
        resolve_model(ckpt, mindformers_config=config)
    assert "holds no tokenizer" in e.value.message and "--tokenizer" in e.value.message
    got = resolve_model(ckpt, mindformers_config=config, tokenizer=models["base"])
    assert got.converted == MINDFORMERS_CKPT and got.label == "base" and got.adapter is None
    ours, theirs = load_file(Path(got.base) / "model.safetensors"), load_file(models["base"] / "model.safetensors")
    assert set(theirs) <= set(ours)
    assert (Path(got.base) / "tokenizer.json").is_file()
    for f in ("tokenizer.json", "tokenizer_config.json"):   # tokenizer files beside the .ckpt serve too
        (ckpt.parent / f).write_bytes((models["base"] / f).read_bytes())
    assert resolve_model(ckpt, mindformers_config=config).converted == MINDFORMERS_CKPT


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Every name given to the resolver, by whichever verb."""
    seen = []
    real = resolver.resolve_model

    def spy(name, **kw):
        seen.append(str(name))
        return real(name, **kw)
    monkeypatch.setattr(resolver, "resolve_model", spy)
    return seen


def test_prepare_plan_and_data_check_go_through_it(models, tmp_path, calls):
    from tunelab.data_check import _model_dir
    from tunelab.pipeline.prepare import resolve_base_run
    from tunelab.recipe import load_recipe
    from tunelab.train.plan.config import _path_config
    run = str(models["run"])
    model = {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": run}
    recipe = load_recipe(write_recipe(tmp_path, "cont", model=model), check_data=False)
    assert _model_dir(recipe, run) == str(models["run"] / "checkpoints" / "step-000010" / "adapter")
    config, said = _path_config(run, "model.path")
    assert config.num_hidden_layers == 2 and said.startswith(f"{run} (adapter) on {models['base']}")
    assert resolve_base_run(recipe) == models["run"]
    assert recipe.model.path == str(models["run"] / "checkpoints" / "step-000010" / "adapter")
    assert calls.count(run) >= 3


def test_serve_loads_the_base_and_the_adapter_apart(models, calls):
    from tunelab.serve.models import ServedModel
    served = ServedModel.load(models["run"], device="cpu")
    try:
        assert served.resolved.adapter == models["run"] / "checkpoints" / "step-000010" / "adapter"
        assert served.resolved.base == str(models["base"]) and served.name == "run/step-000010"
    finally:
        served.close()
    assert calls == [str(models["run"])]


def test_eval_and_serve_take_a_mindformers_ckpt(mindformers_ckpt, tmp_path, calls, capsys):
    from tunelab.cli import main
    from tunelab.serve.models import ServedModel
    ckpt, config, tokenizer = (str(mindformers_ckpt[k]) for k in ("ckpt", "config", "tokenizer"))
    data = tmp_path / "dev.jsonl"
    data.write_text('{"problem": "1 + 1", "solution": "2"}\n')
    assert main(["eval", "--model", ckpt, "--tasks", "arithmetic", "--data", f"arithmetic={data}",
                 "--max-new-tokens", "2", "--device", "cpu", "--out", str(tmp_path / "ev")]) == 2
    assert "MindFormers YAML" in capsys.readouterr().err
    assert main(["eval", "--model", ckpt, "--mindformers-config", config, "--tokenizer", tokenizer, "--tasks",
                 "arithmetic", "--data", f"arithmetic={data}", "--max-new-tokens", "2", "--device", "cpu",
                 "--out", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert list(results["results"]) == ["base"]
    served = ServedModel.load(ckpt, device="cpu", mindformers_config=config, tokenizer=tokenizer)
    try:
        assert served.resolved.converted == MINDFORMERS_CKPT and served.name == "base.ckpt"
    finally:
        served.close()
    assert calls.count(ckpt) == 3
