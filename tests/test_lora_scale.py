"""The adapter-scale frontier: a LoRA adapter scaled toward its base merges to W + s·ΔW exactly (trainable token
rows included), `tunelab run` with `eval.scales` evaluates the best checkpoint at each scale and reports the
frontier, and `export` / `handin --scale` merge at a scale."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import lora_sections, write_recipe
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.model.lora_scale import scaled_adapter

EVAL = {"baseline": True, "batch_size": 16, "max_new_tokens": 8, "checkpoints": "last", "scales": [0.5],
        "tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 8, "seed": 9,
                                                    "options": {"kinds": ["int_mul"], "int_digits": 2}}},
                  {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True},
                  # the tiny base reads at ~0 F1 (no verdict), but agrees with its own answers: a judged ability
                  {"task": "base_agreement", "ability": True, "limit": 6, "options": {"max_answer_tokens": 8}}]}


def _tiny_base(root, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    return root / "base"


def _adapter(root, base, **lora):
    """A LoRA adapter of `base` with random non-zero A and B (and trainable token rows moved off the base's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False, **lora))
    for name, p in model.named_parameters():
        if "trainable_tokens_delta" in name:
            p.data += torch.randn_like(p)
    model.save_pretrained(root / "adapter")
    return root / "adapter"


def _merged(path) -> dict[str, torch.Tensor]:
    """The weights of a model directory, or of an adapter merged into its base by plain peft (no tunelab)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.model.base_record import resolve_base_model
    if not (path / "adapter_config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        base = AutoModelForCausalLM.from_pretrained(resolve_base_model(path))
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tied, lora", [
    (False, {}),
    (False, {"use_rslora": True, "alpha_pattern": {"v_proj": 2}, "rank_pattern": {"down_proj": 2}}),
    (False, {"trainable_token_indices": {"lm_head": [3, 7, 11]}}),
    (True, {"trainable_token_indices": {"embed_tokens": [2, 5]}}),
])
def test_scaled_adapter_merges_to_the_interpolation(tmp_path, tied, lora):
    """Merged by plain peft, so plain peft loads the scaled adapter."""
    from tunelab.model.base_record import resolve_base_model
    base = _tiny_base(tmp_path, tied)
    adapter = _adapter(tmp_path, base, **lora)
    w0, w1 = _merged(base), _merged(adapter)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    for scale in (0.25, 0.5):
        out = scaled_adapter(adapter, scale, tmp_path / f"x{scale}")
        ws = _merged(out)
        assert sorted(ws) == sorted(w0)
        for k in w0:
            torch.testing.assert_close(ws[k], w0[k] + scale * (w1[k] - w0[k]), rtol=0, atol=1e-6, msg=k)
        assert resolve_base_model(out) == str(base.resolve())
    same = _merged(scaled_adapter(adapter, 1.0, tmp_path / "x1"))
    assert all(torch.equal(same[k], w1[k]) for k in w1)


def test_the_base_record_is_relative_to_the_scaled_adapter(tmp_path):
    base = _tiny_base(tmp_path, tied=False)
    adapter = _adapter(tmp_path, base)
    from tunelab.model.base_record import record_base_model
    record_base_model(adapter, str(base))
    out = scaled_adapter(adapter, 0.5, tmp_path / "deeper" / "still" / "scaled")
    record = json.loads((out / "base_model.json").read_text(encoding="utf-8"))
    assert (out / record["relative"]).resolve() == base.resolve()
    assert (out / "adapter_model.safetensors").stat().st_ino == (adapter / "adapter_model.safetensors").stat().st_ino


@pytest.mark.parametrize("lora, field", [({"use_dora": True}, "use_dora"), ({"modules_to_save": ["lm_head"]},
                                                                             "modules_to_save")])
def test_an_adapter_that_does_not_interpolate_is_refused(tmp_path, lora, field):
    adapter = _adapter(tmp_path, _tiny_base(tmp_path, tied=False), **lora)
    with pytest.raises(TunelabError) as e:
        scaled_adapter(adapter, 0.5, tmp_path / "out")
    assert e.value.field == field and not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale", [0, 1.5, -0.5, math.nan])
def test_a_scale_outside_zero_to_one_is_refused(tmp_path, scale):
    with pytest.raises(TunelabError, match="above 0 and at most 1"):
        scaled_adapter(tmp_path, scale, tmp_path / "out")


def test_recipe_scales_are_inside_zero_to_one_and_need_lora(tmp_path):
    from tunelab.recipe import load_recipe
    for scales in ([1.0], [0.0], [0.5, 0.5]):
        with pytest.raises(TunelabError, match="eval.scales"):
            load_recipe(write_recipe(tmp_path, "bad", eval={"scales": scales}))
    with pytest.raises(TunelabError, match="lora.enabled"):  # the from-scratch recipe trains every weight
        load_recipe(write_recipe(tmp_path, "full", eval={"scales": [0.5], "tasks": EVAL["tasks"]}))


@pytest.fixture(scope="module")
def frontier_run(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("frontier")
    path = write_recipe(root, "lora", eval=EVAL, score={"formula": "stage1", "total_params": 8.03e9},
                        **lora_sections(tiny_base, max_steps=10))
    assert main(["run", str(path)]) == 0
    return root / "runs" / "lora"


def test_run_reports_the_frontier(frontier_run):
    m = json.loads((frontier_run / "metrics.json").read_text(encoding="utf-8"))
    f = m["scale_frontier"]
    best = m["best_checkpoint"]
    assert f["checkpoint"] == best and [p["scale"] for p in f["points"]] == [0.5, 1.0]
    half = json.loads((frontier_run / "eval" / f"{best}-x0.5" / "results.json").read_text(encoding="utf-8"))
    assert f["points"][0]["accuracy"] == half["arithmetic"]["accuracy"]
    assert f["points"][1]["accuracy"] == m["checkpoints"][best]["arithmetic"]["accuracy"]
    assert f["points"][1]["retention"]["entries"] == m["retention"]
    assert set(f["points"][0]["retention"]["entries"]) == {"reading.f1", "reading.exact_match",
                                                           "base_agreement.agreement"}
    kept = [p for p in f["points"] if p["retention"]["verdict"] != "FAIL"]
    assert f["chosen"] == (max(kept, key=lambda p: (p["accuracy"], -p["scale"]))["scale"] if kept else None)
    assert (frontier_run / "scaled" / f"{best}-x0.5" / "adapter_config.json").exists()
    report = (frontier_run / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Adapter scale frontier"):]
    assert "| 0.5" in section and "| 1 (the checkpoint)" in section
    assert "base_agreement.agreement retained" in section and "reading.f1 retained" in section
    assert f["points"][0]["retention"]["entries"]["reading.f1"]["retained"] is None  # the tiny base reads at 0
    assert f["points"][0]["retention"]["entries"]["base_agreement.agreement"]["retained"] is not None
    assert (frontier_run / "frontier.png").exists() and "](frontier.png)" in section
    assert "Chosen scale" in section


def test_a_resumed_run_reuses_the_scaled_evaluations(frontier_run):
    best = json.loads((frontier_run / "metrics.json").read_text(encoding="utf-8"))["best_checkpoint"]
    done = frontier_run / "eval" / f"{best}-x0.5" / "results.json"
    before = done.stat().st_mtime_ns
    assert main(["run", str(frontier_run / "recipe.yaml"), "--resume"]) == 0
    assert done.stat().st_mtime_ns == before
    assert "scale_frontier" in json.loads((frontier_run / "metrics.json").read_text(encoding="utf-8"))


def test_export_merges_at_the_scale(frontier_run, tmp_path):
    from safetensors.torch import load_file
    m = json.loads((frontier_run / "metrics.json").read_text(encoding="utf-8"))
    out = tmp_path / "half"
    assert main(["export", str(frontier_run), str(out), "--scale", "0.5", "--dtype", "float32"]) == 0
    exported = load_file(out / "model.safetensors")
    want = _merged(frontier_run / "scaled" / f"{m['best_checkpoint']}-x0.5")
    for k, v in exported.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6, msg=k)
    assert "LoRA update times 0.5" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("scale, message", [("0", "above 0 and at most 1"), ("1.5", "above 0 and at most 1"),
                                            ("half", "a number in (0, 1] or 'chosen'"),
                                            ("chosen", "this run has none")])
def test_a_bad_export_scale_is_one_error_naming_the_flag(frontier_run, tmp_path, capsys, scale, message):
    run = tmp_path / "run"
    shutil.copytree(frontier_run, run, symlinks=True)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    del metrics["scale_frontier"]  # a run without a frontier
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    assert main(["export", str(run), str(tmp_path / "out"), "--scale", scale]) == 2
    err = capsys.readouterr().err
    assert "--scale" in err and message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_handin_at_a_scale_reports_what_it_measured(frontier_run, tmp_path, capsys):
    m = json.loads((frontier_run / "metrics.json").read_text(encoding="utf-8"))
    assert main(["handin", str(frontier_run), "--out", str(tmp_path / "x"), "--format", "hf", "--scale", "0.3"]) == 2
    assert "did not evaluate scale 0.3" in capsys.readouterr().err
    out = tmp_path / "bundle"
    assert main(["handin", str(frontier_run), "--out", str(out), "--format", "hf", "--scale", "0.5"]) == 0
    point = m["scale_frontier"]["points"][0]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "adapter scale **0.5**" in report and f"{100 * point['accuracy']:.2f}%" in report
    assert f"{point['score']:.4f}" in report
