"""`tunelab convert`: HF <-> MindFormers .ckpt for tiny Llama and InternLM-style models, bit for bit.

The references below are faithful copies of MindFormers' own functions (mindspore-lab/mindformers):
`name_replace` of mindformers/models/llama/convert_weight.py and convert_reversed.py (fd4deebc) — the same
in research/internlm/ (v1.3.2) — and `qkv_concat_hf2mg` / `ffn_concat_hf2mg` of
mindformers/utils/convert_utils.py. Where MindSpore is installed (the `mindspore` extra), the .ckpt files
are also read and written by MindSpore itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.convert import mindspore_ckpt
from tunelab.convert.mindformers import (Arch, arch_from_hf_config, hf_config_from_mindformers_yaml,
                                               hf_to_mindspore, mindspore_to_hf, split_qkv, fuse_qkv,
                                               fuse_gate_up, split_gate_up)
from tunelab.convert.mindspore_ckpt import iter_ckpt, write_ckpt


# --- faithful copies of MindFormers' conversion code (the references) -------------------------------------

def mf_hf_to_ms(name: str) -> str:
    """convert_weight.py: name_replace (then convert_pt_to_ms' two fix-ups, no-ops for HF names)."""
    name = name.replace('embed_tokens.weight', 'tok_embeddings.embedding_weight')
    name = name.replace('.self_attn.q_proj.', '.attention.wq.')
    name = name.replace('.self_attn.k_proj.', '.attention.wk.')
    name = name.replace('.self_attn.v_proj.', '.attention.wv.')
    name = name.replace('.self_attn.o_proj.', '.attention.wo.')
    name = name.replace('.mlp.gate_proj.', '.feed_forward.w1.')
    name = name.replace('.mlp.down_proj.', '.feed_forward.w2.')
    name = name.replace('.mlp.up_proj.', '.feed_forward.w3.')
    name = name.replace('.input_layernorm.', '.attention_norm.')
    name = name.replace('.post_attention_layernorm.', '.ffn_norm.')
    name = name.replace('.norm.', '.norm_out.')
    if name == 'norm.weight':
        name = 'norm_out.weight'
    if name[:7] == 'layers.':
        name = name[7:]
    return name


def mf_ms_to_hf(name: str) -> str:
    """convert_reversed.py: name_replace."""
    name = name.replace('tok_embeddings.embedding_weight', 'embed_tokens.weight')
    name = name.replace('.attention.wq.', '.self_attn.q_proj.')
    name = name.replace('.attention.wk.', '.self_attn.k_proj.')
    name = name.replace('.attention.wv.', '.self_attn.v_proj.')
    name = name.replace('.attention.wo.', '.self_attn.o_proj.')
    name = name.replace('.feed_forward.w1.', '.mlp.gate_proj.')
    name = name.replace('.feed_forward.w2.', '.mlp.down_proj.')
    name = name.replace('.feed_forward.w3.', '.mlp.up_proj.')
    name = name.replace('.attention_norm.', '.input_layernorm.')
    name = name.replace('.ffn_norm.', '.post_attention_layernorm.')
    name = name.replace('.norm_out.', '.norm.')
    return name


def mf_qkv_concat_hf2mg(qkv_weights, num_heads, n_kv_heads, hidden_size):
    qkv_dim = len(qkv_weights.shape)
    if qkv_dim == 2:
        w, h = qkv_weights.shape
    else:
        w = qkv_weights.shape[0]
        qkv_weights = qkv_weights.reshape(w, -1)
        h = 1
    n_rep = num_heads // n_kv_heads
    q_channel = hidden_size
    kv_channel = hidden_size // n_rep
    q_weight = qkv_weights[: q_channel, :]
    k_weight = qkv_weights[q_channel: q_channel + kv_channel, :]
    v_weight = qkv_weights[q_channel + kv_channel: q_channel + 2 * kv_channel, :]
    q_w_reshape = q_weight.reshape(n_kv_heads, hidden_size // n_kv_heads, -1)
    k_w_reshape = k_weight.reshape(n_kv_heads, hidden_size // num_heads, -1)
    v_w_reshape = v_weight.reshape(n_kv_heads, hidden_size // num_heads, -1)
    cat_qkv_weight = np.concatenate((q_w_reshape, k_w_reshape, v_w_reshape), axis=1)
    out_qkv_weight = cat_qkv_weight.reshape(w, h)
    if qkv_dim == 1:
        out_qkv_weight = out_qkv_weight.reshape(w,)
    return out_qkv_weight


def mf_ffn_concat_hf2mg(ffn_weights, ffn_hidden_size):
    w, h = ffn_weights.shape
    gate_weight = ffn_weights[: w // 2, :]
    hidden_weight = ffn_weights[w // 2: w // 2 * 2, :]
    gate_w_reshape = gate_weight.reshape(ffn_hidden_size, 1, -1)
    hidden_w_reshape = hidden_weight.reshape(ffn_hidden_size, 1, -1)
    cat_ffn_weight = np.concatenate((gate_w_reshape, hidden_w_reshape), axis=1)
    return cat_ffn_weight.reshape(w, h)


# --- tiny models -----------------------------------------------------------------------------------------

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def tiny_llama(tmp_path, dtype=torch.bfloat16, **extra):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **extra})).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms too, so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.uniform_(-1, 1)
    out = tmp_path / "hf"
    model.save_pretrained(out)
    return model, out


def internlm_dir(tmp_path):
    """An HF InternLM (v1) directory as its remote code saves one: Llama names, q/k/v/o biases, a
    rotary_emb.inv_freq buffer per layer, config `model_type: internlm` with `bias: true`, pytorch_model.bin."""
    torch.manual_seed(1)
    cfg = {**TINY, "num_key_value_heads": 4}
    llama = LlamaForCausalLM(LlamaConfig(**cfg, attention_bias=True)).eval()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.uniform_(-1, 1)
    state = dict(llama.state_dict())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(cfg["num_hidden_layers"]):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    d = tmp_path / "internlm"
    d.mkdir()
    torch.save(state, d / "pytorch_model.bin")
    config = {"architectures": ["InternLMForCausalLM"], "model_type": "internlm", "bias": True,
              "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                           "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
              "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
              "num_attention_heads": cfg["num_attention_heads"], "num_hidden_layers": cfg["num_hidden_layers"],
              "vocab_size": cfg["vocab_size"], "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
              "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return llama, state, d


def hf_state(d):
    if (d / "model.safetensors").exists():
        return load_file(d / "model.safetensors")
    return torch.load(d / "pytorch_model.bin", weights_only=True)


def assert_bitwise(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k


# --- tests -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_llama_round_trip_is_bit_for_bit_with_mindformers_names(tmp_path, dtype):
    _, hf = tiny_llama(tmp_path, dtype)
    assert hf_to_mindspore(hf, tmp_path / "m.ckpt")["parameters"] == 2 * 9 + 3
    ckpt = {t.name: t for t in iter_ckpt(tmp_path / "m.ckpt")}
    src = hf_state(hf)
    assert sorted(ckpt) == sorted(mf_hf_to_ms(n) for n in src)  # MindFormers' own names, nothing more
    ms_dtype = {torch.bfloat16: "BFloat16", torch.float32: "Float32", torch.float16: "Float16"}[dtype]
    for name, t in src.items():  # values unchanged, layout [out, in] kept
        c = ckpt[mf_hf_to_ms(name)]
        assert c.ms_dtype == ms_dtype and c.shape == tuple(t.shape)
        assert torch.equal(c.to_torch(), t)
    assert sorted(mf_ms_to_hf(n) for n in ckpt) == sorted(src)  # and back by MindFormers' reverse names
    mindspore_to_hf(tmp_path / "m.ckpt", tmp_path / "back", config=hf)
    assert_bitwise(src, hf_state(tmp_path / "back"))


def test_param_list_matches_transformers_model(tmp_path):
    """The architecture's parameter list (what names and shapes are checked against) is the model's."""
    for extra in ({}, {"attention_bias": True}, {"num_key_value_heads": 1, "head_dim": 16}):
        model = LlamaForCausalLM(LlamaConfig(**{**TINY, **extra}))
        arch = arch_from_hf_config(model.config.to_dict(), "config.json")
        assert arch.hf_params() == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_internlm_round_trip_and_logits(tmp_path):
    llama, state, d = internlm_dir(tmp_path)
    summary = hf_to_mindspore(d, tmp_path / "internlm.ckpt")
    assert summary["skipped_buffers"] == 2 and summary["arch"] == "internlm"
    names = [t.name for t in iter_ckpt(tmp_path / "internlm.ckpt")]
    params = {k: v for k, v in state.items() if "inv_freq" not in k}
    assert sorted(names) == sorted(mf_hf_to_ms(n) for n in params)
    assert "model.layers.1.attention.wo.bias" in names and not any("inv_freq" in n for n in names)
    mindspore_to_hf(tmp_path / "internlm.ckpt", tmp_path / "back", config=d)
    assert_bitwise(params, hf_state(tmp_path / "back"))
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "internlm"

    # from MindFormers' YAML instead: a plain transformers Llama with attention_bias, the same computation
    mf_yaml = tmp_path / "predict_internlm_tiny.yaml"
    mf_yaml.write_text(yaml.safe_dump({"model": {"model_config": {
        "type": "InternLMConfig", "seq_length": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
        "vocab_size": 96, "intermediate_size": 40, "rms_norm_eps": 1e-6, "has_bias": True}}}))
    mindspore_to_hf(tmp_path / "internlm.ckpt", tmp_path / "as_llama", config=mf_yaml)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "as_llama").eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, llama(ids).logits)


def test_mindformers_yaml_configs_give_the_published_models():
    llama3 = {"type": "LlamaConfig", "seq_length": 512, "hidden_size": 4096, "num_layers": 32, "num_heads": 32,
              "n_kv_heads": 8, "vocab_size": 128256, "intermediate_size": 14336, "rms_norm_eps": 1.0e-5,
              "theta": 500000}
    internlm = {"type": "InternLMConfig", "seq_length": 2048, "hidden_size": 4096, "num_layers": 32,
                "num_heads": 32, "vocab_size": 103168, "multiple_of": 256, "rms_norm_eps": 1.0e-6,
                "has_bias": True}
    counts = {}
    for name, mc in (("llama3", llama3), ("internlm", internlm)):
        import tempfile
        from pathlib import Path
        with tempfile.TemporaryDirectory() as t:
            p = Path(t) / "m.yaml"
            p.write_text(yaml.safe_dump({"model": {"model_config": mc}}))
            cfg, qkv = hf_config_from_mindformers_yaml(p)
        assert not qkv
        arch = arch_from_hf_config(cfg, "x")
        counts[name] = sum(int(np.prod(s)) for s in arch.hf_params().values())
        if name == "internlm":  # FFN width from multiple_of, as MindFormers computes it: InternLM-7B's 11008
            assert cfg["intermediate_size"] == 11008 and cfg["attention_bias"]
    assert counts["llama3"] == 8_030_261_248  # Meta-Llama-3-8B
    assert counts["internlm"] == 7_321_423_872 + 32 * 4 * 4096  # InternLM-7B without / with q/k/v/o biases


def test_fused_layout_is_mindformers_megatron_order(tmp_path):
    arch = Arch("llama", hidden=32, layers=1, heads=8, kv_heads=2, head_dim=4, intermediate=12, vocab=8,
                attention_bias=True, tied=False)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(32, 32, generator=g), torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    ref = mf_qkv_concat_hf2mg(torch.cat([q, k, v]).numpy(), 8, 2, 32)
    assert np.array_equal(fuse_qkv(q, k, v, arch).numpy(), ref)
    qb, kb, vb = torch.randn(32, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    assert np.array_equal(fuse_qkv(qb, kb, vb, arch).numpy(), mf_qkv_concat_hf2mg(torch.cat([qb, kb, vb]).numpy(),
                                                                                   8, 2, 32))
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fuse_qkv(q, k, v, arch), arch), (q, k, v)))
    gate, up = torch.randn(12, 32, generator=g), torch.randn(12, 32, generator=g)
    assert np.array_equal(fuse_gate_up(gate, up).numpy(), mf_ffn_concat_hf2mg(torch.cat([gate, up]).numpy(), 12))
    assert all(torch.equal(a, b) for a, b in zip(split_gate_up(fuse_gate_up(gate, up)), (gate, up)))


def test_qkv_concat_checkpoint_round_trip(tmp_path):
    _, hf = tiny_llama(tmp_path, torch.float32, attention_bias=True)
    hf_to_mindspore(hf, tmp_path / "fused.ckpt", qkv_concat=True)
    names = {t.name for t in iter_ckpt(tmp_path / "fused.ckpt")}
    assert "model.layers.0.attention.w_qkv.weight" in names and "model.layers.0.attention.w_qkv.bias" in names
    assert "model.layers.1.feed_forward.w_gate_hidden.weight" in names
    assert not any(".attention.wq." in n or ".feed_forward.w1." in n for n in names)
    mindspore_to_hf(tmp_path / "fused.ckpt", tmp_path / "back", config=hf)
    assert_bitwise(hf_state(hf), hf_state(tmp_path / "back"))


def test_output_shards_and_dtype(tmp_path):
    _, hf = tiny_llama(tmp_path, torch.float32)
    hf_to_mindspore(hf, tmp_path / "m.ckpt")
    mindspore_to_hf(tmp_path / "m.ckpt", tmp_path / "sharded", config=hf, dtype="bfloat16", max_shard_bytes=8000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((tmp_path / "sharded" / f).exists() for f in files)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "sharded")
    src = hf_state(hf)
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k].to(torch.bfloat16)), k


def test_unknown_missing_and_misshaped_names_are_listed(tmp_path):
    model, hf = tiny_llama(tmp_path, torch.float32)
    ms = [(mf_hf_to_ms(k), v) for k, v in hf_state(hf).items()]
    extra = tmp_path / "extra.ckpt"
    write_ckpt(extra, ms + [("adam_m.model.norm_out.weight", torch.zeros(32)), ("global_step", torch.zeros(1))])
    with pytest.raises(TunelabError, match="2 parameter.*adam_m.model.norm_out.weight, global_step"):
        mindspore_to_hf(extra, tmp_path / "o1", config=hf)
    missing = tmp_path / "missing.ckpt"
    write_ckpt(missing, [(n, t) for n, t in ms if n != "model.layers.1.ffn_norm.weight"])
    with pytest.raises(TunelabError, match=r"1 missing: model\.layers\.1\.post_attention_layernorm\.weight"):
        mindspore_to_hf(missing, tmp_path / "o2", config=hf)
    wrong = dict(json.loads((hf / "config.json").read_text()), intermediate_size=48)
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    hf_to_mindspore(hf, tmp_path / "m2.ckpt")
    with pytest.raises(TunelabError, match="6 with another shape"):  # gate/up/down of both layers
        mindspore_to_hf(tmp_path / "m2.ckpt", tmp_path / "o3", config=tmp_path / "wrong.json")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    # an HF directory with a name MindFormers has no mapping for
    state = hf_state(hf)
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    from safetensors.torch import save_file
    save_file(state, hf / "model.safetensors")
    with pytest.raises(TunelabError, match=r"1 unknown Hugging Face parameter\(s\): model\.layers\.0\.self_attn"):
        hf_to_mindspore(hf, tmp_path / "x.ckpt")


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(TunelabError, match="not a MindSpore checkpoint"):
        list(iter_ckpt(junk))
    good = tmp_path / "g.ckpt"
    write_ckpt(good, [("a", torch.arange(100, dtype=torch.float32))])
    (tmp_path / "t.ckpt").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(TunelabError, match="truncated"):
        list(iter_ckpt(tmp_path / "t.ckpt"))
    assert main(["convert", str(good), str(tmp_path / "out")]) == 2
    assert "give --config" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), str(tmp_path / "x.ckpt")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bad_configs_and_flags_are_one_line_errors(tmp_path, capsys):
    """The .ckpt -> HF config and the HF side's JSON files are the user's: each kind of damage is one line with
    exit 2 (a binary --config, a non-UTF-8 or non-object config.json, an index without a weight map and
    --max-shard-gb nan each ended in a traceback)."""
    good = tmp_path / "g.ckpt"
    write_ckpt(good, [("a", torch.arange(10, dtype=torch.float32))])
    (tmp_path / "bin.yaml").write_bytes(b"\x12\xd2\xff binary")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(b"\xff{}")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]", encoding="utf-8")
    cases = [
        (["convert", str(good), str(tmp_path / "o1"), "--config", str(tmp_path / "bin.yaml")], "not UTF-8 text"),
        (["convert", str(good), str(tmp_path / "o2"), "--config", str(tmp_path / "bad")], "not UTF-8 text"),
        (["convert", str(good), str(tmp_path / "o3"), "--config", str(tmp_path / "list")], "expected a JSON object"),
        (["convert", str(tmp_path / "bad"), str(tmp_path / "o4.ckpt")], "not UTF-8 text"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    _, hf = tiny_llama(tmp_path)
    (hf / "model.safetensors.index.json").write_text('{"metadata": {}}', encoding="utf-8")
    assert main(["convert", str(hf), str(tmp_path / "o5.ckpt")]) == 2
    assert "weight_map" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", str(good), str(tmp_path / "o6"), "--config", str(hf), "--max-shard-gb", "nan"])
    assert e.value.code == 2 and "argument --max-shard-gb" in capsys.readouterr().err


def test_cli_convert_both_ways(tmp_path, capsys):
    _, hf = tiny_llama(tmp_path)
    assert main(["convert", str(hf), str(tmp_path / "m.ckpt")]) == 0
    assert "21 llama parameters" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "m.ckpt"), str(tmp_path / "back"), "--config", str(hf)]) == 0
    assert_bitwise(hf_state(hf), hf_state(tmp_path / "back"))
    assert main(["convert", str(hf), str(tmp_path / "m.ckpt")]) == 2  # never overwritten


def test_large_parameters_are_split_into_slices(tmp_path, monkeypatch):
    """MindSpore splits a parameter over 512 MiB into same-tag values; the reader joins them (small here)."""
    monkeypatch.setattr(mindspore_ckpt, "SLICE_BYTES", 64)
    t = torch.randn(10, 7, dtype=torch.float32)
    write_ckpt(tmp_path / "s.ckpt", [("w", t), ("b", torch.ones(3, dtype=torch.bfloat16))])
    raw = (tmp_path / "s.ckpt").read_bytes()
    assert raw.count(b"\x0a\x01w") == 5  # 280 bytes in 64-byte slices, each a value tagged "w"
    got = {x.name: x.to_torch() for x in iter_ckpt(tmp_path / "s.ckpt")}
    assert torch.equal(got["w"], t) and got["b"].dtype == torch.bfloat16


# --- against MindSpore itself ----------------------------------------------------------------------------

def test_mindspore_reads_ours_and_we_read_mindspores(tmp_path, monkeypatch):
    ms = pytest.importorskip("mindspore", reason="the optional `mindspore` extra is not installed")
    g = torch.Generator().manual_seed(0)
    tensors = [("model.tok_embeddings.embedding_weight", torch.randn(5, 3, generator=g).to(torch.bfloat16)),
               ("f16", torch.randn(4, generator=g).half()), ("f32", torch.randn(2, 3, 2, generator=g)),
               ("i32", torch.arange(6, dtype=torch.int32).reshape(2, 3)), ("i64", torch.tensor([7, -8]))]
    monkeypatch.setattr(mindspore_ckpt, "SLICE_BYTES", 8)  # every tensor in several slices
    write_ckpt(tmp_path / "ours.ckpt", tensors)
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    assert list(loaded) == [n for n, _ in tensors]
    for name, t in tensors:
        p = loaded[name]
        assert tuple(p.shape) == tuple(t.shape)
        assert str(p.dtype) == mindspore_ckpt.TORCH_TO_MS[str(t.dtype).removeprefix("torch.")]
        got = p.astype(ms.float32).asnumpy() if t.dtype == torch.bfloat16 else p.asnumpy()
        assert np.array_equal(got, t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()), name
    theirs = tmp_path / "theirs.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(t.float().numpy()).astype(ms.bfloat16)
                         if t.dtype == torch.bfloat16 else ms.Tensor(t.numpy())} for n, t in tensors], str(theirs))
    read = {x.name: x.to_torch() for x in iter_ckpt(theirs)}
    assert list(read) == [n for n, _ in tensors]
    for name, t in tensors:
        assert read[name].dtype == t.dtype and torch.equal(read[name], t), name
