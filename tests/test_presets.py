"""Presets reproduce the published parameter totals on the meta device; load_config resolves names and paths."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.model.presets import PRESETS, build_on_meta, load_config, preset_config


def _total(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, total", [
    ("llama3-8b", 8_030_261_248),
    ("internlm-7b", 7_321_423_872),
    ("gemma-2b", 2_506_172_416),
])
def test_published_totals_on_meta(name, total):
    model = build_on_meta(preset_config(name))
    assert next(model.parameters()).device.type == "meta"
    assert _total(model) == total


def test_internlm_total_counts_no_qkv_bias():
    # the original model has q/k/v/o biases; the competition's figure leaves them out
    with_bias = build_on_meta(preset_config("internlm-7b", attention_bias=True))
    assert _total(with_bias) == 7_321_423_872 + 32 * 4 * 4096


def test_gemma_embeddings_are_tied():
    model = build_on_meta(preset_config("gemma-2b"))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_llama3_config_fields():
    c = preset_config("llama3-8b")
    assert (c.model_type, c.num_key_value_heads, c.max_position_embeddings, c.rms_norm_eps) == ("llama", 8, 8192, 1e-5)
    assert c.rope_parameters["rope_theta"] == 500000.0
    assert c.tie_word_embeddings is False


@pytest.mark.parametrize("name, hidden, layers, heads", [("tiny", 256, 4, 4), ("tiny-6l", 256, 6, 4),
                                                         ("micro", 64, 2, 2)])
def test_tiny_presets_take_vocab_from_tokenizer(name, hidden, layers, heads):
    assert preset_config(name).vocab_size == 2000
    c = preset_config(name, vocab_size=321)
    assert (c.model_type, c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == \
        ("llama", 321, hidden, layers, heads)


def test_overrides_do_not_leak_into_presets():
    c = preset_config("llama3-8b")
    c.rope_parameters["rope_theta"] = 1.0
    assert PRESETS["llama3-8b"]["rope_parameters"]["rope_theta"] == 500000.0


def test_unknown_preset_lists_known():
    with pytest.raises(TunelabError, match="unknown preset 'llama9'.*llama3-8b.*micro"):
        preset_config("llama9")


def test_load_config_preset_dir_and_json(tmp_path):
    assert load_config("micro").hidden_size == 64
    preset_config("micro", vocab_size=77).save_pretrained(tmp_path)
    assert load_config(str(tmp_path)).vocab_size == 77
    assert load_config(str(tmp_path / "config.json")).vocab_size == 77


def test_load_config_errors(tmp_path):
    with pytest.raises(TunelabError, match="no config.json") as e:
        load_config(str(tmp_path))
    assert e.value.file == str(tmp_path)
    missing = str(tmp_path / "nope" / "config.json")
    with pytest.raises(TunelabError, match="no such file") as e:
        load_config(missing)
    assert e.value.file == missing
    with pytest.raises(TunelabError, match="unknown model 'llama3'.*not a preset"):
        load_config("llama3")
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(TunelabError, match="cannot load the model config"):
        load_config(str(bad))
