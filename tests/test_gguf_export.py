"""`tunelab export --format gguf` checked by the real llama.cpp runtime (llama-cpp-python, built from its source
package): the exported file's greedy tokens equal tunelab's on the same checkpoint, and its tokenizer gives the
same ids for mixed Chinese/English text with digits. Models: the shipped tiny base (Llama, tunelab's BPE), a
MiniGPT preset with the CJK-aware corpus tokenizer and the `sep` template (the course model's shape), a LoRA
adapter merged on the tiny base, and tiny Qwen2, Gemma, Gemma-2 and Llama-3-style models with
tests/tiny_archs.py's tokenizers and chat templates. The Modelfile's template and
the one-line errors need no runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_archs import (CORPUS, GEMMA_TEMPLATE, LLAMA3_TEMPLATE, byte_bpe_tokenizer,  # noqa: E402
                        qwen2_parts)

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = ROOT / "models" / "tiny-base"
MAX_NEW = 24

# mixed Chinese/English with digits, CJK punctuation, several spaces, a newline
MIXED = [
    "北京是中国的首都，也是一座历史悠久的城市。Beijing is the capital of China.",
    "计算 12.5 + 7.25 = 19.75，答案是19.75。",
    "The quick brown fox jumps over the lazy dog 3 times in 2024年。",
    "你好，请问有什么可以帮你的吗？ What is 2 + 3?\n猫喜欢在阳光下睡觉。",
    "用一句话介绍你自己: I am tunelab, 一个工作台 (workbench) for LLMs 123456.",
    "“引号”与‘单引号’、顿号——破折号…省略号 and ASCII \"quotes\" 'single' (parens) [brackets].",
]

MINIGPT_CORPUS = CORPUS + [
    "机器学习是人工智能的一个分支，它让计算机从数据中学习。Machine learning is a branch of AI.",
    "2024年，全球有超过1000万名学生学习编程。In 2024, over 10 million students learned to code.",
    "“你好！”他说。她回答：“今天是星期三，气温是25度。”",
    "代码示例：\n    x = 1\n    y = 2\n        return x + y",   # indented: runs of spaces become tokens
] * 6


def llama_cpp_or_skip():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                                   "'tunelab[llama-cpp]', which builds llama.cpp from source)")


# --- the models -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minigpt_dir(tmp_path_factory) -> Path:
    """The course model's shape: the minigpt-tiny preset (Llama-style, tied embeddings) with tunelab's CJK-aware
    corpus tokenizer and the `sep` chat template, random weights, saved as tunelab saves checkpoints."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.presets import preset_config
    from tunelab.model.tokenizer import train_corpus_tokenizer
    path = tmp_path_factory.mktemp("minigpt") / "minigpt"
    tok = train_corpus_tokenizer(MINIGPT_CORPUS, 600)
    tok.chat_template = PromptTemplate("sep").chat_template()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(preset_config("minigpt-tiny", vocab_size=len(tok),
                                                           eos_token_id=tok.eos_token_id,
                                                           pad_token_id=tok.pad_token_id), dtype=torch.float32)
    with torch.no_grad():  # wider than the 0.02 init, so the greedy choice is clear-cut
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    save_template(PromptTemplate("sep"), path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA adapter on the shipped tiny base with non-zero B (so merging changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.model.loading import load_for_inference
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    base, tok = load_for_inference(str(TINY_BASE))
    torch.manual_seed(4)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(TINY_BASE)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def tiny_arch(root: Path, name: str) -> Path:
    """Tiny Qwen2, Gemma, Gemma-2 and Llama-3-style models with tests/tiny_archs.py's tokenizers and chat templates
    (without its forced end of turn, which costs a minute: stopping is not what is compared here)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, GemmaConfig, LlamaConfig
    if name == "qwen2":
        tok, config = qwen2_parts()
    elif name == "gemma":
        tok = byte_bpe_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                                 pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
        tok.chat_template = GEMMA_TEMPLATE
        config = GemmaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=32,  # 4 x 32 > hidden 64
                             max_position_embeddings=512, hidden_activation="gelu_pytorch_tanh",
                             initializer_range=0.05, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
    elif name == "gemma2":
        tok = byte_bpe_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                                 pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
        tok.chat_template = GEMMA_TEMPLATE
        config = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                              max_position_embeddings=512, sliding_window=16,  # shorter than most prompts
                              layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=0.5,
                              final_logit_softcapping=1.5, initializer_range=0.05, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    else:
        tok = byte_bpe_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>", "<|eot_id|>"], bos_token="<|begin_of_text|>",
                                 eos_token="<|end_of_text|>")
        tok.chat_template = LLAMA3_TEMPLATE
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             rope_theta=500000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             tie_word_embeddings=False)
    torch.manual_seed(1)
    path = root / name
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {name: tiny_arch(root, name) for name in ("qwen2", "gemma", "gemma2", "llama3")}


def model_path(name: str, request) -> Path:
    if name == "tiny-base":
        return TINY_BASE
    if name == "minigpt":
        return request.getfixturevalue("minigpt_dir")
    if name == "adapter":
        return request.getfixturevalue("adapter_dir")
    return request.getfixturevalue("arch_dirs")[name]


def export(src: Path, out: Path, quant: str):
    from tunelab.convert.export import export_gguf_dir
    return export_gguf_dir(src, out, quant)


def prompts_of(tokenizer) -> list[str]:
    """Chat-rendered prompts (the template's special tokens included) and two raw mixed texts."""
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                              add_generation_prompt=True) for m in MIXED[:4]]
    return rendered + MIXED[4:]


# --- llama.cpp's side -------------------------------------------------------------------------------------------

def open_llama(path: Path):
    """The file in llama.cpp, its KV cache in F32 (the default F16 cache would round what tunelab keeps)."""
    llama_cpp = llama_cpp_or_skip()
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=2, verbose=False, seed=0,
                           logits_all=True,  # llama-cpp-python keeps the logits it evaluates only then
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def llama_detokenize(llm, ids: list[int]) -> str:
    """The text of `ids` by llama.cpp's llama_token_to_piece. (llama-cpp-python's own `detokenize` gives each
    token a 32-byte buffer and silently drops a longer piece, such as a merge of 11 Chinese characters.)"""
    import ctypes

    import llama_cpp
    buffer = (ctypes.c_char * 1024)()
    out = b""
    for token in ids:
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buffer, len(buffer), 0, True)
        assert 0 <= n <= len(buffer)
        out += bytes(buffer[:n])
    return out.decode("utf-8")


def llama_greedy(llm, ids: list[int], stops, max_new: int) -> list[int]:
    """llama.cpp's argmax continuation, token by token, ending before a stop id."""
    import numpy as np
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(max_new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stops:
            break
        out.append(token)
        llm.eval([token])
    return out


def tunelab_greedy(model, tokenizer, prompts: list[str], max_new: int) -> tuple[list[list[int]], list[list[int]]]:
    """tunelab's decoding core on each prompt (encoded as tunelab encodes them): (prompt ids, new ids)."""
    import torch

    from tunelab.decoding.embedded import decode_rows
    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    stops = stop_token_ids(model, tokenizer)
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        new, _ = decode_rows(model, rows, max_new, stops, pad_token_id(tokenizer, stops), batch_size=1)
    return rows, new


# --- the proof -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,quant", [("tiny-base", "f16"), ("minigpt", "f32"), ("adapter", "f32"),
                                        ("qwen2", "f32"), ("gemma", "f32"), ("gemma2", "f32"), ("llama3", "f32")])
def test_llama_cpp_greedy_tokens_equal_tunelabs(name, quant, request, tmp_path):
    """Same prompt ids and same greedy answer ids in llama.cpp as in tunelab, for chat-rendered and raw mixed
    Chinese/English prompts. The tiny base's bf16 weights are exact in f16, so its f16 export is checked."""
    llama_cpp_or_skip()
    from tunelab.decoding.stops import stop_token_ids
    from tunelab.model.loading import load_for_inference
    src = model_path(name, request)
    result = export(src, tmp_path / "out", quant)
    assert result.path.name.endswith(f"-{quant.upper()}.gguf") and result.quantize_command is None
    model, tokenizer = load_for_inference(str(src), merge=True)
    prompts = prompts_of(tokenizer)
    rows, expected = tunelab_greedy(model, tokenizer, prompts, MAX_NEW)
    stops = stop_token_ids(model, tokenizer)
    llm = open_llama(result.path)
    assert llm.n_vocab() == model.config.vocab_size
    assert llm.token_eos() == tokenizer.eos_token_id
    for prompt, ids, want in zip(prompts, rows, expected):
        assert llama_tokenize(llm, prompt) == ids, prompt
        assert llama_greedy(llm, ids, stops, MAX_NEW) == want, prompt
    assert any(len(w) >= 8 for w in expected)  # real answers, not all stopping at once


@pytest.mark.parametrize("name,pre", [("tiny-base", "smollm"), ("minigpt", "smollm"), ("qwen2", "qwen2"),
                                      ("gemma2", "gpt-2")])
def test_llama_cpp_tokenizer_ids_equal_on_mixed_text(name, pre, request, tmp_path):
    """Every mixed text, each line of the corpus and each Chinese/English pair joined with and without a space
    gives the same ids in llama.cpp as in the Hugging Face tokenizer, and the ids decode back to the text."""
    llama_cpp_or_skip()
    from transformers import AutoTokenizer
    src = model_path(name, request)
    result = export(src, tmp_path / "out", "f16")
    assert result.tokenizer_pre == pre
    tokenizer = AutoTokenizer.from_pretrained(src)
    llm = open_llama(result.path)
    texts = MIXED + sorted(set(MINIGPT_CORPUS)) + [a + sep + b for a in MIXED[:3] for b in MIXED[3:]
                                                   for sep in ("", " ", "\n")]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llama_tokenize(llm, text) == ids, text
        assert llama_detokenize(llm, ids) == text


def test_minigpt_tokenizer_is_the_closest_not_exact(minigpt_dir, tmp_path):
    """llama.cpp has no pre-tokenizer that isolates CJK runs and CJK punctuation. Where that matters: blanks
    ending in two or more spaces right before a Chinese character or CJK punctuation, which tunelab's tokenizer
    keeps as one piece ("  ", a token once indented text taught it) and `smollm` splits as " " + " 中". One
    space, none, newlines or a tab before them, and any text without such a run, tokenise the same (the test
    above)."""
    llama_cpp_or_skip()
    from transformers import AutoTokenizer
    result = export(minigpt_dir, tmp_path / "out", "f16")
    assert result.tokenizer_pre == "smollm" and not result.tokenizer_exact
    tokenizer = AutoTokenizer.from_pretrained(minigpt_dir)
    llm = open_llama(result.path)

    def same(text):
        return llama_tokenize(llm, text) == tokenizer(text, add_special_tokens=False)["input_ids"]

    for right in ("北京", "，", "。", "“"):
        for left in ("in 2024,", "a", "中国"):
            assert not any(same(left + sep + right) for sep in ("  ", "   ", "\n  "))
            assert all(same(left + sep + right) for sep in ("", " ", "\n", "\t", " \n", "\n ", "\n\n"))
    text = "in 2024,  北京"
    assert llama_detokenize(llm, llama_tokenize(llm, text)) == text  # other ids, the same text


# --- the types ------------------------------------------------------------------------------------------------

def test_q8_0_follows_converts_rules_and_runs(tmp_path):
    """Norms and 1-D tensors stay F32, matrices Q8_0, F16 where rows do not split into 32-blocks
    (convert_hf_to_gguf.py's rules), and llama.cpp's next-token logits with it follow tunelab's (Q8_0 rounds:
    close, not equal)."""
    import gguf
    result = export(TINY_BASE, tmp_path / "out", "q8_0")
    reader = gguf.GGUFReader(str(result.path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "F16"  # rows of 688, no multiple of Q8_0's 32: convert's fallback
    llama_cpp_or_skip()
    import numpy as np
    import torch

    from tunelab.model.loading import load_for_inference
    model, tokenizer = load_for_inference(str(TINY_BASE))
    llm = open_llama(result.path)
    for prompt in prompts_of(tokenizer):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            want = model(torch.tensor([ids])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[len(ids) - 1])
        assert np.corrcoef(got, want)[0, 1] > 0.999
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_k_quant_by_llama_cpps_quantiser(tmp_path):
    """Q4_K_M is made by llama.cpp's own quantiser from the f16 file, which is then removed."""
    llama_cpp_or_skip()
    import gguf
    result = export(TINY_BASE, tmp_path / "out", "q4_k_m")
    assert result.path.name == "tiny-base-Q4_K_M.gguf" and result.quantize_command is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "tiny-base-Q4_K_M.gguf"]
    reader = gguf.GGUFReader(str(result.path))
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert "Q4_K" in kinds and "F32" in kinds
    assert "FROM ./tiny-base-Q4_K_M.gguf" in (tmp_path / "out" / "Modelfile").read_text()
    assert open_llama(result.path).n_vocab() == 1724


def test_k_quant_without_llama_cpp_prints_the_command(tmp_path, monkeypatch):
    """Without llama-cpp-python the f16 file stays and the exact llama-quantize command is returned."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    out = tmp_path / "out"
    result = export(TINY_BASE, out, "q5_k_m")
    assert result.path == out / "tiny-base-F16.gguf" and result.path.exists()
    assert result.quantize_command == f"llama-quantize {out}/tiny-base-F16.gguf {out}/tiny-base-Q5_K_M.gguf Q5_K_M"
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("# once `llama-quantize tiny-base-F16.gguf tiny-base-Q5_K_M.gguf Q5_K_M` has run in "
                                "this directory: FROM ./tiny-base-Q5_K_M.gguf\n")
    assert "\nFROM ./tiny-base-F16.gguf\n" in modelfile


def test_the_quantiser_hint_names_the_extra_the_docs_name(tmp_path, monkeypatch, capsys):
    """Without llama-cpp-python, `tunelab export --quant q5_k_m` says how to get it: pyproject's [llama-cpp] extra,
    the same words as docs/gguf.md and --help (the hint said `pip install llama-cpp-python`, the docs the extra)."""
    import tomllib

    from tunelab.cli import main
    install = "pip install 'tunelab[llama-cpp]'"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(req.startswith("llama-cpp-python") for req in extras["llama-cpp"])
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert main(["export", str(TINY_BASE), str(tmp_path / "out"), "--format", "gguf", "--quant", "q5_k_m"]) == 0
    assert f"made by llama.cpp's quantiser ({install} to have tunelab run it); run: llama-quantize " in \
        capsys.readouterr().out
    assert install in (ROOT / "docs" / "gguf.md").read_text(encoding="utf-8")
    assert install in " ".join((ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split())
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "src").rglob("*.py")]:
        assert "pip install llama-cpp-python" not in path.read_text(encoding="utf-8"), path


# --- the Modelfile ----------------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5，答案是五。"},
     {"role": "user", "content": "再加 10 呢?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


@pytest.mark.parametrize("name", ["tiny-base", "minigpt", "qwen2", "gemma2", "llama3"])
def test_modelfile_template_renders_as_the_chat_template(name, request):
    """The turns read off the Jinja chat template rebuild every conversation exactly as the template renders it
    (with a system message too where the template shows one); the Go template is made of those turns."""
    from transformers import AutoTokenizer

    from tunelab.convert.modelfile import chat_turns, ollama_modelfile
    tokenizer = AutoTokenizer.from_pretrained(model_path(name, request))
    turns = chat_turns(tokenizer)
    conversations = list(CONVERSATIONS)
    if turns.system:
        conversations += [[{"role": "system", "content": "You are 助手."}, *c] for c in CONVERSATIONS]
    for messages in conversations:
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert turns.render(messages) == want
    text = ollama_modelfile("m.gguf", tokenizer)
    assert text.startswith("FROM ./m.gguf\n") and 'TEMPLATE """{{- range $i, $m := .Messages }}' in text
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in text
    assert text.count("{{") == text.count("}}")


def test_modelfile_stops_at_the_end_of_turn_and_leaves_bos_to_the_runtime(request):
    """Gemma-2: `<end_of_turn>` is a stop besides `<eos>`, and the template's leading `<bos>` is left out when
    llama.cpp adds BOS itself."""
    from transformers import AutoTokenizer

    from tunelab.convert.modelfile import chat_turns, ollama_modelfile
    tokenizer = AutoTokenizer.from_pretrained(model_path("gemma2", request))
    assert chat_turns(tokenizer, add_bos=False).first.startswith("<bos>")
    assert chat_turns(tokenizer, add_bos=True).first == "<start_of_turn>user\n"
    text = ollama_modelfile("m.gguf", tokenizer, add_bos=True)
    assert 'PARAMETER stop "<eos>"' in text and 'PARAMETER stop "<end_of_turn>"' in text



@pytest.mark.parametrize("name", ["tiny-base", "qwen2", "gemma2"])
def test_the_modelfile_carries_the_runs_system_prompt_where_the_template_shows_one(name, request):
    """`data.system` is what the run trained with: the Modelfile's SYSTEM, which Ollama puts first in a conversation
    that brings none, renders (through the template's own system turn) what training rendered. A template that
    drops system messages (tunelab's single-turn ones) gets no SYSTEM: the run never saw one."""
    from transformers import AutoTokenizer

    from tunelab.convert.modelfile import chat_turns, ollama_modelfile
    from tunelab.errors import TunelabError
    tokenizer = AutoTokenizer.from_pretrained(model_path(name, request))
    text = ollama_modelfile("m.gguf", tokenizer, system="你是一位数学老师。")
    turns = chat_turns(tokenizer)
    if turns.system is None:
        assert "SYSTEM" not in text
        return
    assert '\nSYSTEM """你是一位数学老师。"""\n' in text
    messages = [{"role": "system", "content": "你是一位数学老师。"}, {"role": "user", "content": "2 + 3?"}]
    assert turns.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with pytest.raises(TunelabError, match="data.system"):
        ollama_modelfile("m.gguf", tokenizer, system='say """hi"""')


# --- bad inputs: one line each ----------------------------------------------------------------------------------

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    from tunelab.cli import main
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_unsupported_architecture_is_one_line(tmp_path, capsys):
    """A GPT-2 model: named in one line before any weight is read."""
    from transformers import GPT2Config, GPT2LMHeadModel
    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300)).save_pretrained(src)
    code, err = run_cli(["export", str(src), str(tmp_path / "out"), "--format", "gguf"], capsys)
    assert code != 0 and len(err.splitlines()) == 1
    assert "GGUF export writes llama, qwen2, gemma, gemma2 models; this one is 'gpt2'" in err
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (["export", str(TINY_BASE), str(tmp_path / "o1"), "--quant", "q8_0"], "--quant"),
        (["export", str(TINY_BASE), str(tmp_path / "full"), "--format", "gguf"], "not empty"),
        (["export", str(tmp_path / "nothing"), str(tmp_path / "o2"), "--format", "gguf"], "nothing"),
    ]
    for args, needle in cases:
        code, err = run_cli(args, capsys)
        assert code != 0 and len(err.splitlines()) == 1 and needle in err, err


def test_scaled_rope_and_other_tokenizers_are_refused(tmp_path):
    from transformers import LlamaConfig

    from tunelab.errors import TunelabError
    from tunelab.convert.gguf_export import check_architecture
    from tunelab.convert.gguf_vocab import pre_tokenizer_name
    config = LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    with pytest.raises(TunelabError, match="rope_type 'llama3'"):
        check_architecture(config)
    with pytest.raises(TunelabError, match="matches none that llama.cpp knows"):
        pre_tokenizer_name({"type": "Whitespace"})


def test_cli_export_gguf_prints_the_file(tmp_path, capsys):
    from tunelab.cli import main
    assert main(["export", str(TINY_BASE), str(tmp_path / "out"), "--format", "gguf", "--quant", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert f"exported {tmp_path / 'out' / 'tiny-base-Q8_0.gguf'}" in out and "Modelfile" in out


def test_cli_lists_the_types_the_exporter_writes():
    from tunelab.cli.model import GGUF_QUANTS
    from tunelab.convert.gguf_export import QUANTS
    assert GGUF_QUANTS == QUANTS


def test_a_run_directory_exports_its_checkpoint(scratch_run, tmp_path):
    """A run directory: its last checkpoint (as serve and predict pick it), named after the run, whose prompt
    ids and greedy answer llama.cpp reproduces."""
    from tunelab.decoding.stops import stop_token_ids
    from tunelab.convert.export import export_gguf_dir
    from tunelab.model.loading import load_for_inference
    from tunelab.runs import pick_checkpoint
    run_dir = scratch_run["run_dir"]
    result = export_gguf_dir(run_dir, tmp_path / "out", "f32", which="last")
    assert result.path.name == f"{run_dir.name}-F32.gguf"
    llama_cpp_or_skip()
    model, tokenizer = load_for_inference(str(pick_checkpoint(run_dir, "last")))
    prompts = prompts_of(tokenizer)[:2]
    rows, expected = tunelab_greedy(model, tokenizer, prompts, 12)
    llm = open_llama(result.path)
    for ids, want in zip(rows, expected):
        assert llama_greedy(llm, ids, stop_token_ids(model, tokenizer), 12) == want
