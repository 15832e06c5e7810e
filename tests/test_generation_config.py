"""Sampling defaults travel with the model: every checkpoint and export holds a generation_config.json with the
decoding its evaluation used (greedy, the eval's answer length, the full stop set), plain transformers obeys
it, a hub model's own config is read as transformers reads it, and `tunelab serve` answers a request that
leaves temperature / max_tokens out as the evaluation would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.decoding.generation_config import (GENERATION_CONFIG_FILE, SamplingDefaults, eval_max_new_tokens,
                                             evaluated_generation_config, sampling_defaults)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*"))


def saved(directory: Path) -> dict:
    return json.loads((directory / GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_every_checkpoint_states_the_evaluated_decoding_and_transformers_obeys_it(scratch_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tunelab.decoding.stops import stop_token_ids
    ckpts = checkpoints(scratch_run["run_dir"])
    assert len(ckpts) == 5
    want_len = scratch_run["recipe"].eval.max_new_tokens
    for c in ckpts:
        cfg = saved(c / "model")
        assert cfg["do_sample"] is False and cfg["max_new_tokens"] == want_len == 32
        assert not {"temperature", "top_p", "top_k", "_from_model_config", "max_length"} & set(cfg)
    model_dir = ckpts[-1] / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = saved(model_dir)
    assert cfg["eos_token_id"] == sorted(stop_token_ids(model, tok)) and tok.eos_token_id in cfg["eos_token_id"]
    assert cfg["pad_token_id"] == tok.pad_token_id
    GenerationConfig.from_pretrained(model_dir).validate(strict=True)      # clean: strict raises on any warning
    # plain transformers generate, no arguments: greedy, at most the evaluation's length, stops at a stop id
    ids = tok("What is 12 + 7?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids)[0, ids["input_ids"].shape[1]:].tolist()
        again = model.generate(**ids)[0, ids["input_ids"].shape[1]:].tolist()
    assert out == again and 1 <= len(out) <= 32
    assert len(out) == 32 or out[-1] in cfg["eos_token_id"]


def test_export_keeps_the_checkpoints_config(scratch_run, tmp_path):
    from tunelab.convert.export import export
    out = export(scratch_run["run_dir"], tmp_path / "exported", dtype="float32", which="last")
    assert saved(out) == saved(checkpoints(scratch_run["run_dir"])[-1] / "model")


def test_a_task_longer_than_the_eval_default_sets_the_length():
    from tunelab.recipe import EvalConfig
    eval_cfg = EvalConfig.model_validate({"max_new_tokens": 24, "tasks": [
        {"task": "ppl", "source": {"corpus": "c"}},
        {"task": "continuation", "source": {"corpus": "c"}, "options": {"max_new_tokens": 96}}]})
    assert eval_max_new_tokens(eval_cfg) == 96
    assert eval_max_new_tokens(EvalConfig.model_validate({"max_new_tokens": 24})) == 24
    shared = EvalConfig.model_validate({"max_new_tokens": 24, "options": {"max_new_tokens": 64}, "tasks": [
        {"task": "continuation", "source": {"corpus": "c"}}]})
    assert eval_max_new_tokens(shared) == 64


def test_the_chat_templates_end_of_turn_is_a_stop_id(tiny_base):
    """A model trained on a template whose turn ends with its own token (ChatML's <|im_end|>): plain
    transformers must stop there too, so it is in eos_token_id beside EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    cfg = evaluated_generation_config(model, tok, 16)
    assert set(cfg.eos_token_id) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}


@pytest.fixture
def hub_like_base(tiny_base, tmp_path) -> Path:
    """The tiny base with a hub chat model's generation config (Llama-3-Instruct's shape: sampling, two EOS)."""
    base = tmp_path / "hub-base"
    shutil.copytree(tiny_base, base)
    (base / GENERATION_CONFIG_FILE).write_text(json.dumps(
        {"bos_token_id": 3, "eos_token_id": [0, 7], "do_sample": True, "temperature": 0.6, "top_p": 0.9,
         "repetition_penalty": 1.05, "transformers_version": "4.46.0"}), encoding="utf-8")
    return base


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")   # peft calling a deprecated transformers API
def test_a_lora_checkpoint_of_a_hub_model_states_greedy_and_serves_greedy(hub_like_base, tmp_path):
    """The base's sampling is replaced (not merged: temperature beside do_sample=False is invalid), its bos id
    and extra EOS are kept; the adapter directory gets the file too, and serving the adapter uses it rather
    than the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tunelab.data.templates import PromptTemplate
    from tunelab.convert.export import export
    from tunelab.serve.models import ServedModel
    from tunelab.train.checkpoints import save_checkpoint
    base = AutoModelForCausalLM.from_pretrained(hub_like_base)
    served_base = ServedModel.load(hub_like_base, name="hub")
    try:   # a hub model's own config, read as model.generate() reads it (transformers' top_k default: 50)
        assert served_base.defaults == SamplingDefaults(temperature=0.6, top_p=0.9, top_k=50)
    finally:
        served_base.close()
    tok = AutoTokenizer.from_pretrained(hub_like_base)
    tok.chat_template = PromptTemplate("alpaca").chat_template()
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    ckpt = save_checkpoint(tmp_path / "run", 1, peft_model, tok, PromptTemplate("alpaca"), {}, {"step": 1},
                           lora=True, save_merged=True, max_new_tokens=7)
    for d in ("adapter", "model"):
        cfg = saved(ckpt / d)
        assert cfg["do_sample"] is False and cfg["max_new_tokens"] == 7
        assert cfg["bos_token_id"] == 3 and cfg["eos_token_id"] == [0, 7] and cfg["pad_token_id"] == tok.pad_token_id
        assert not {"temperature", "top_p", "repetition_penalty"} & set(cfg)
        GenerationConfig.from_pretrained(ckpt / d).validate(strict=True)
    served = ServedModel.load(ckpt / "adapter", name="adapter")
    try:
        assert served.defaults == SamplingDefaults(temperature=0.0, max_tokens=7)
        assert served.model.generation_config.eos_token_id == [0, 7]
    finally:
        served.close()
    # exporting the adapter keeps its config, not the base's sampling that save_pretrained writes
    assert saved(export(ckpt / "adapter", tmp_path / "exported", dtype="float32")) == saved(ckpt / "adapter")


def test_what_a_config_says_about_sampling():
    from transformers import GenerationConfig
    assert sampling_defaults(None) == SamplingDefaults()
    derived = GenerationConfig.from_model_config({"eos_token_id": 0, "pad_token_id": 1})
    assert sampling_defaults(derived) == SamplingDefaults()       # from config.json: states no decoding
    assert sampling_defaults(GenerationConfig(eos_token_id=0)) == SamplingDefaults(temperature=0.0)   # greedy
    assert sampling_defaults(GenerationConfig(do_sample=True, top_k=0, max_new_tokens=64)) == \
        SamplingDefaults(temperature=1.0, top_p=1.0, top_k=0, max_tokens=64)


# --- the server -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def greedy_server(scratch_run):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.models import ServedModel
    torch.set_num_threads(1)
    served = ServedModel.load(scratch_run["run_dir"], which="last")
    srv = BackgroundServer(create_app(served)).start()
    client = httpx.Client(base_url=srv.url, timeout=60)
    yield served, client
    client.close()
    srv.stop()
    served.close()


def test_a_request_that_leaves_sampling_out_answers_as_the_evaluation_did(greedy_server):
    served, client = greedy_server
    assert served.defaults == SamplingDefaults(temperature=0.0, max_tokens=32)
    msgs = [{"role": "user", "content": "What is 12 + 7?"}]

    def chat(**kw) -> dict:
        r = client.post("/v1/chat/completions", json={"messages": msgs, "ignore_eos": True, **kw})
        assert r.status_code == 200, r.text
        return r.json()
    default = chat()
    greedy = chat(temperature=0, max_tokens=32)
    assert default["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    assert default["usage"]["completion_tokens"] == 32          # the evaluation's length, not the whole context
    assert chat(temperature=None)["choices"][0]["message"] == greedy["choices"][0]["message"]   # null = left out
    # an explicit value always wins: temperature samples, max_tokens sets the length
    sampled = {chat(temperature=1.5, seed=s)["choices"][0]["message"]["content"] for s in range(4)}
    assert sampled - {greedy["choices"][0]["message"]["content"]}
    assert chat(max_tokens=5)["usage"]["completion_tokens"] == 5
    # completions too: 32 tokens by default rather than OpenAI's 16, greedy
    r = client.post("/v1/completions", json={"prompt": "12 + 7 =", "ignore_eos": True}).json()
    g = client.post("/v1/completions", json={"prompt": "12 + 7 =", "ignore_eos": True, "temperature": 0,
                                             "max_tokens": 32}).json()
    assert r["choices"][0]["text"] == g["choices"][0]["text"] and r["usage"]["completion_tokens"] == 32
