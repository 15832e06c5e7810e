"""Tiny real architectures for the decoding parity tests, built from their Hugging Face config classes.

Llama-3-style (GQA, `<|eot_id|>` ends a turn, `<|end_of_text|>` is EOS), Qwen2 (ChatML, `<|im_end|>` ends a
turn, `<|endoftext|>` is EOS), Gemma-2 (soft-capping and a sliding window shorter than the prompts,
`<end_of_turn>` ends a turn, `<eos>` is EOS) and GPT-2 (learned positions, EOS ends a turn). Each has a
byte-level BPE tokenizer trained in-process with the architecture's special tokens and chat template; no hub,
no network.

A random-init model never emits its end-of-turn token, so `force_end_of_turn` makes it: it takes a token `t`
the model emits a few tokens into some answers and swaps the roles of `t` and end-of-turn (their rows in the
input embedding and the LM head), so the model now ends those answers where it wrote `t`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# corpus the tokenizers are trained on: English and Chinese, so both kinds of prompt tokenise into merges
CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris is the capital.",
    "Write one sentence about autumn: the leaves turn red and gold.", "Add the numbers 12 and 30, then explain.",
    "You are a helpful assistant. Answer briefly and politely.", "Tell me a short story about a cat and a boat.",
    "The weather today is sunny with a light breeze from the west.", "Please summarise the following paragraph.",
    "计算 12.5 + 7.25 = ?", "用一句话介绍你自己。", "今天天气很好，我们去公园散步吧。", "请把下面的句子翻译成英文。",
    "北京是中国的首都，也是一座历史悠久的城市。", "猫喜欢在阳光下睡觉。", "你好，请问有什么可以帮你的吗？",
] * 4

# user messages of mixed lengths, English and Chinese; the longest are longer than Gemma-2's sliding window
MESSAGES = [
    "Hi", "你好", "What is 2 + 3?", "用一句话介绍你自己。",
    "Write one sentence about autumn.", "今天天气很好，我们去公园散步吧。",
    "Tell me a short story about a cat and a boat, please, with a happy ending and a moral.",
    "请把下面的句子翻译成英文：北京是中国的首都，也是一座历史悠久的城市。猫喜欢在阳光下睡觉。",
    "The quick brown fox jumps over the lazy dog. The weather today is sunny with a light breeze from the west. "
    "Please summarise the following paragraph in one short sentence.",
    "计算 12.5 + 7.25 = ?", "Add the numbers 12 and 30, then explain.",
    "猫喜欢在阳光下睡觉。The quick brown fox jumps over the lazy dog. 你好，请问有什么可以帮你的吗？ "
    "What is the capital of France? 北京是中国的首都。",
]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
GPT2_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


@dataclass
class TinyArch:
    """A saved tiny model directory (model + tokenizer) and what a test needs to know about it."""
    name: str
    path: Path
    eos_id: int
    end_of_turn_id: int
    stop_ids: frozenset[int]        # every id that ends an answer: EOS and the end-of-turn token
    in_generation_config: bool      # whether generation_config.eos_token_id lists the end-of-turn id
    prompts: list[str]              # chat-rendered prompts with the generation prompt
    lora_targets: tuple[str, ...]   # module names a LoRA adapter wraps


def byte_bpe_tokenizer(special: list[str], vocab_size: int = 360, **roles):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on CORPUS; `special` get the first ids, `roles`
    name them (eos_token=..., bos_token=..., pad_token=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   additional_special_tokens=[s for s in special if s not in roles.values()],
                                   **roles)


def render(tokenizer, messages: list[str]) -> list[str]:
    """Each user message as a chat prompt ending with the assistant's generation prompt."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                          add_generation_prompt=True) for m in messages]


def greedy_reference(model, tokenizer, prompt: str, stop_ids, max_new_tokens: int) -> list[int]:
    """`model.generate` on one prompt, greedy, stopping at `stop_ids`: the new ids, stop token included."""
    import torch
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids),
                             pad_token_id=min(stop_ids))
    return out[0, ids.shape[1]:].tolist()


def swap_tokens(model, a: int, b: int) -> None:
    """Swap the roles of token ids a and b: their input-embedding rows and LM-head rows (once when tied)."""
    import torch
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        for w in (emb,) if head is emb else (emb, head):
            w[[a, b]] = w[[b, a]]


def force_end_of_turn(model, tokenizer, prompts: list[str], eot: int, stop_ids, max_new_tokens: int) -> None:
    """Make the model end some answers with `eot` and leave others running: swap `eot` with a token the
    model emits early (after at least one other token) in some answers, keeping the first candidate after
    which at least one prompt stops after a token or more and at least one runs to `max_new_tokens`."""
    special = set(tokenizer.all_special_ids)
    outputs = [greedy_reference(model, tokenizer, p, stop_ids, max_new_tokens) for p in prompts]
    candidates: list[int] = []
    for pos in range(1, max_new_tokens // 2):
        for out in outputs:
            if pos < len(out) and out[pos] not in special and out[pos] not in candidates:
                candidates.append(out[pos])
    for t in candidates:
        swap_tokens(model, t, eot)
        ends = [greedy_reference(model, tokenizer, p, stop_ids, max_new_tokens) for p in prompts]
        stopped_late = sum(1 < len(o) < max_new_tokens and o[-1] == eot for o in ends)
        running = sum(len(o) == max_new_tokens for o in ends)
        if stopped_late and running:
            return
        swap_tokens(model, t, eot)
    raise RuntimeError("no token to swap with end-of-turn makes one prompt stop late and leaves one running")


def _finish(name, model, tokenizer, root: Path, eot: int, in_generation_config: bool,
            lora_targets: tuple[str, ...], max_new_tokens: int) -> TinyArch:
    """Save the tokenizer under root/name and reload it, force end-of-turn, set generation_config's stop ids,
    save the model next to it."""
    from transformers import AutoTokenizer
    path = root / name
    tokenizer.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)  # as tests load it (Qwen2's class has its own pre-tokenizer)
    eos = tokenizer.eos_token_id
    stop_ids = frozenset({eos, eot})
    prompts = render(tokenizer, MESSAGES)
    model.eval()
    model.generation_config.eos_token_id = sorted(stop_ids) if in_generation_config else eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    force_end_of_turn(model, tokenizer, prompts, eot, stop_ids, max_new_tokens)
    model.save_pretrained(path)
    return TinyArch(name, path, eos, eot, stop_ids, in_generation_config, prompts, lora_targets)


def _model(config, seed: int):
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_llama3(root: Path, max_new_tokens: int) -> TinyArch:
    """Llama-3-style instruct model: GQA (4 query heads, 2 KV heads), `<|eot_id|>` ends a turn and is listed
    in generation_config as the Instruct checkpoints list it; EOS is `<|end_of_text|>`; no pad token."""
    from transformers import LlamaConfig
    tok = byte_bpe_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>"], bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    tok.chat_template = LLAMA3_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=500000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    model = _model(config, seed=0)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    return _finish("llama3", model, tok, root, eot, True, ("q_proj", "v_proj"), max_new_tokens)


def qwen2_parts():
    """(tokenizer, config) of the tiny Qwen2: ChatML, EOS and pad `<|endoftext|>`, untied head."""
    from transformers import Qwen2Config
    tok = byte_bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|endoftext|>",
                             pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    return tok, config


def build_qwen2(root: Path, max_new_tokens: int) -> TinyArch:
    """Qwen2 with ChatML: `<|im_end|>` ends a turn, EOS and pad are `<|endoftext|>`. Its generation_config
    lists only EOS, as a fine-tuned checkpoint's may: only the chat template says `<|im_end|>` stops."""
    tok, config = qwen2_parts()
    model = _model(config, seed=1)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    return _finish("qwen2", model, tok, root, eot, False, ("q_proj", "v_proj"), max_new_tokens)


GEMMA2_SLIDING_WINDOW = 16


def build_gemma2(root: Path, max_new_tokens: int) -> TinyArch:
    """Gemma-2: attention and final-logit soft-capping (caps near the logits' size, so they bite), a sliding
    window of 16 on alternate layers (most prompts are longer), tied embeddings, BOS `<bos>`, EOS `<eos>`,
    `<end_of_turn>` ends a turn and is in generation_config as in gemma-2-it."""
    from transformers import Gemma2Config
    tok = byte_bpe_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                             pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tok.chat_template = GEMMA_TEMPLATE
    config = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                          max_position_embeddings=512, sliding_window=GEMMA2_SLIDING_WINDOW,
                          layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=0.5,
                          final_logit_softcapping=1.5, initializer_range=0.05, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = _model(config, seed=2)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    return _finish("gemma2", model, tok, root, eot, True, ("q_proj", "v_proj"), max_new_tokens)


def build_gpt2(root: Path, max_new_tokens: int) -> TinyArch:
    """GPT-2: learned absolute positions, tied embeddings, `<|endoftext|>` is BOS and EOS and ends a turn
    (a plain "role: content" template), no pad token. Initialised wider than GPT-2's 0.02, which makes a
    random 2-layer model repeat one token for every prompt."""
    from transformers import GPT2Config
    tok = byte_bpe_tokenizer(["<|endoftext|>"], bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.chat_template = GPT2_TEMPLATE
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.1,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = _model(config, seed=3)
    return _finish("gpt2", model, tok, root, tok.eos_token_id, True, ("c_attn",), max_new_tokens)


def build_smol(out: Path) -> Path:
    """SmolLM2-Instruct's shape in miniature, saved as an HF directory: Llama, tied embeddings, ChatML with a
    default system prompt, EOS and pad <|im_end|>, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = byte_bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>",
                             pad_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


BUILDERS = {"llama3": build_llama3, "qwen2": build_qwen2, "gemma2": build_gemma2, "gpt2": build_gpt2}
