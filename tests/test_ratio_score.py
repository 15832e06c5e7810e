"""LoRA parameter counts (published figures, on the meta device), target resolution, score formulas and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.model.lora import check_targets_matched, count_parameters, make_lora_config, resolve_target_modules
from tunelab.model.presets import build_on_meta, preset_config
from tunelab.recipe import mindformers_target_to_hf
from tunelab.scoring import competition_score, adapter_param_counts, low_param_ratio, parse_accuracy

# --- published figures ---------------------------------------------------------------------------


@pytest.mark.parametrize("model, target, trainable, total", [
    ("llama3-8b", ".*wq|.*wv|.*wo", 5_505_024, 8_030_261_248),
    ("llama3-8b", "q_proj,v_proj", 3_407_872, 8_030_261_248),
    ("internlm-7b", ".*wq|.*wo", 4_194_304, 7_321_423_872),
    ("gemma-2b", "q_proj|v_proj|o_proj", 1_511_424, 2_506_172_416),
])
def test_published_lora_counts(model, target, trainable, total):
    counts = adapter_param_counts(model, 8, target)
    assert (counts["trainable"], counts["total"]) == (trainable, total)
    assert (counts["model"], counts["rank"]) == (model, 8)


def test_published_ratio_with_nominal_total():
    assert f"{low_param_ratio(5_505_024, 8.03e9):.9f}" == "0.000685557"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_count_parameters_excludes_adapters_from_total():
    from peft import get_peft_model
    base = build_on_meta(preset_config("micro"))
    base_total = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, make_lora_config(4, 8, 0.0, ["q_proj"]))
    # micro: 2 layers x q_proj 64 -> 64 at rank 4
    assert count_parameters(model) == (2 * 4 * (64 + 64), base_total)


# --- target resolution ---------------------------------------------------------------------------


def test_mindformers_mapping():
    assert mindformers_target_to_hf(".*wq|.*wv|.*wo") == ".*q_proj|.*v_proj|.*o_proj"
    assert mindformers_target_to_hf("wq|wk|wv|wo") == "q_proj|k_proj|v_proj|o_proj"
    assert mindformers_target_to_hf(".*w1|.*w2|.*w3") == ".*gate_proj|.*down_proj|.*up_proj"


def test_resolve_lists_and_comma_lists():
    assert resolve_target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert resolve_target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert resolve_target_modules("wq,wk,wv,wo,w1,w2,w3") == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
    with pytest.raises(TunelabError, match="empty LoRA target"):
        resolve_target_modules(" , ")


@pytest.mark.parametrize("target", [".*wq|.*wv|.*wo", "wq|wv|wo", "q_proj|v_proj|o_proj", ".*q_proj|.*v_proj|.*o_proj"])
def test_resolved_regex_fullmatches_module_names(target):
    pattern = resolve_target_modules(target)
    assert resolve_target_modules(pattern) == pattern  # idempotent
    for part in ("q_proj", "v_proj", "o_proj"):
        assert re.fullmatch(pattern, f"model.layers.0.self_attn.{part}")
    assert not re.fullmatch(pattern, "model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(pattern, "model.layers.0.mlp.down_proj")


def test_invalid_regex():
    with pytest.raises(TunelabError, match=r"invalid LoRA target regex '\(q_proj'"):
        resolve_target_modules("(q_proj")


def test_check_targets_matched_lists_linear_layers():
    model = build_on_meta(preset_config("micro"))
    check_targets_matched(model, ".*wq|.*wv")
    with pytest.raises(TunelabError, match=r"'\.\*wz'.*matches no module.*down_proj, gate_proj, k_proj, lm_head"):
        check_targets_matched(model, ".*wz")
    with pytest.raises(TunelabError, match="container module.*model.layers.0.self_attn"):
        check_targets_matched(model, ".*self_attn")


# --- scoring -------------------------------------------------------------------------------------


def test_score_formulas():
    # stage1: (1 - 0.000685557) * 0.3 + 0.7161 * 0.7 = 0.2997943329 + 0.50127
    assert competition_score("stage1", 0.7161, 0.000685557) == pytest.approx(0.8010643329, abs=1e-12)
    # stage2: (1 - 0.00685557) * 0.3 + 0.50127
    assert competition_score("stage2", 0.7161, 0.000685557) == pytest.approx(0.799213329, abs=1e-12)
    assert competition_score("stage1", 0.5, 0.01) == pytest.approx(0.647)
    assert competition_score("stage2", 0.5, 0.01) == pytest.approx(0.62)
    with pytest.raises(TunelabError, match="unknown score formula"):
        competition_score("stage3", 0.5, 0.01)
    with pytest.raises(TunelabError, match="accuracy must be in 0..1"):
        competition_score("stage1", 71.61, 0.01)


def test_low_param_ratio_validates():
    assert low_param_ratio(3, 4) == 0.75
    for trainable, total in ((1, 0), (5, 4), (-1, 4), (1, float("nan"))):
        with pytest.raises(TunelabError):
            low_param_ratio(trainable, total)


@pytest.mark.parametrize("text, value", [("0.7161", 0.7161), ("71.61%", 0.7161), (" 71.61 % ", 0.7161),
                                         ("1", 1.0), ("100%", 1.0), ("0", 0.0)])
def test_parse_accuracy(text, value):
    assert parse_accuracy(text) == value


@pytest.mark.parametrize("text, message", [("71.61", "above 1.*71.61%"), ("101%", "out of range"),
                                           ("-0.1", "out of range"), ("abc", "not a number"),
                                           ("nan", "not a finite")])
def test_parse_accuracy_rejects(text, message):
    with pytest.raises(TunelabError, match=message):
        parse_accuracy(text)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_ratio_llama3(capsys):
    assert main(["ratio", "llama3-8b", "--lora-rank", "8", "--lora-target", ".*wq|.*wv|.*wo",
                 "--total-params", "8.03e9"]) == 0
    out = capsys.readouterr().out
    assert "trainable: 5505024\n" in out
    assert "total: 8030000000 (--total-params; counted 8030261248)\n" in out
    assert "ratio: 0.000685557\n" in out


def test_cli_ratio_json(capsys):
    assert main(["ratio", "llama3-8b", "--lora-rank", "8", "--lora-target", "q_proj,v_proj", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable"] == 3_407_872 and data["total"] == data["counted_total"] == 8_030_261_248
    assert data["ratio"] == 3_407_872 / 8_030_261_248
    assert data["target"] == ["q_proj", "v_proj"]


@pytest.fixture()
def tiny_hf_dir(tmp_path):
    from transformers import LlamaConfig
    LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2).save_pretrained(tmp_path)
    return tmp_path


# 2 x (embed + lm_head 100*32) + 2 layers x (attention 4*32*32 + MLP 3*32*64 + 2 norms 32) + final norm 32
TINY_TOTAL = 2 * 100 * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32
TINY_LORA_QV_R4 = 2 * 2 * 4 * (32 + 32)


@pytest.mark.parametrize("which", ["dir", "config.json"])
def test_cli_ratio_local_config(capsys, tiny_hf_dir, which):
    path = tiny_hf_dir if which == "dir" else tiny_hf_dir / "config.json"
    assert main(["ratio", str(path), "--lora-rank", "4", "--lora-target", "wq,wv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["trainable"], data["total"]) == (TINY_LORA_QV_R4, TINY_TOTAL)


@pytest.mark.parametrize("argv, message", [
    (["micro", "--lora-target", ".*wz"], "matches no module of LlamaForCausalLM"),
    (["/no/such/dir/config.json", "--lora-target", "q_proj"], "/no/such/dir/config.json: no such file"),
    (["micro", "--lora-target", "q_proj", "--total-params", "0"], "total parameters must be a positive number"),
])
def test_cli_ratio_errors_are_one_line(capsys, argv, message):
    assert main(["ratio", *argv[:1], "--lora-rank", "8", *argv[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tunelab: error: ") and captured.err.count("\n") == 1
    assert message in captured.err and "Traceback" not in captured.err


def test_cli_score(capsys):
    assert main(["score", "--accuracy", "71.61%", "--ratio", "0.000685557"]) == 0
    assert "score: 0.801064333\n" in capsys.readouterr().out
    assert main(["score", "--formula", "stage2", "--accuracy", "0.7161", "--ratio", "0.000685557", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["formula"] == "stage2" and data["accuracy"] == 0.7161
    assert data["score"] == pytest.approx(0.799213329, abs=1e-12)
    assert main(["score", "--accuracy", "71.61", "--ratio", "0.0007"]) == 2
    err = capsys.readouterr().err
    assert "above 1" in err and err.count("\n") == 1


def test_score_does_not_import_torch():
    code = ("import sys, tunelab.cli as c; rc = c.main(['score', '--accuracy', '71.61%', '--ratio', '0.000685557']);"
            "print(rc, [m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "0 []"
