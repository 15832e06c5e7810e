"""`data.template: model`: a chat model trained, evaluated and served in its own chat template.

The reference the labels are checked against is the issue's: the input ids are `apply_chat_template(conv)`, and
the tokens trained for assistant turn i are those of `apply_chat_template(conv[:i+1])` after those of
`apply_chat_template(conv[:i], add_generation_prompt=True)`. TRL's twins: `test_chat_template_trl.py`."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.data.examples import Example
from tunelab.data.packing import IGNORE, collate_rows, encode_examples, pack_examples, shared_prefix
from tunelab.data.templates import PromptTemplate, save_template
from tunelab.errors import TunelabError

# SmolLM2-Instruct's template: ChatML with a default system prompt when the conversation has none
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# a Llama-3.2-style header with a date variable the run fixes
DATED = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
         "{% if loop.first %}Today Date: {{ date_string }}\n\n{% endif %}{{ m['content'] }}<|eot_id|>{% endfor %}"
         "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

CONVERSATION = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
                {"role": "user", "content": "北京在哪里？"}, {"role": "assistant", "content": "北京在中国。"},
                {"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]


@pytest.fixture(scope="module")
def tokenizer():
    from tunelab.model.tokenizer import train_bpe_tokenizer
    texts = ["What is 2 + 3? 5", "北京在哪里？北京在中国。", "You are a helpful AI assistant named SmolLM",
             "system user assistant Today Date"] * 30
    tok = train_bpe_tokenizer(texts, 400)
    tok.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin|>"]})
    tok.bos_token = "<|begin|>"
    tok.chat_template = CHATML
    return tok


def _reference(tok, conv, **kwargs):
    """ids and labels by the reference, rendering and tokenising each prefix with transformers itself."""
    def ids(messages, gen=False):
        return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=True,
                                       **kwargs)["input_ids"] if messages else []
    full = ids(conv)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(conv):
        if m["role"] == "assistant":
            start, end = len(ids(conv[:i], True)), len(ids(conv[: i + 1]))
            labels[start:end] = full[start:end]
    labels[0] = IGNORE
    return full, labels


def test_ids_are_apply_chat_template_and_labels_every_assistant_turn(tokenizer):
    template = PromptTemplate("model")
    examples = [Example("c", "Say nothing.", "", messages=CONVERSATION),
                Example("d", "北京在哪里？", "北京在中国。", messages=CONVERSATION[1:5]),
                Example("s", "What is 2 + 3?", "5")]
    encoded = encode_examples(tokenizer, template, examples, max_len=4096)
    convs = [CONVERSATION, CONVERSATION[1:5], CONVERSATION[1:3]]
    for enc, conv in zip(encoded, convs):
        ids, labels = _reference(tokenizer, conv)
        assert enc.input_ids == ids and enc.labels == labels
    # the trained tokens are each answer and its end of turn: "5<|im_end|>\n" ...
    trained = tokenizer.decode([t for t in encoded[0].labels if t != IGNORE])
    assert trained == "5<|im_end|>\n北京在中国。<|im_end|>\n<|im_end|>\n"
    # the default system prompt of the template stays when neither the data nor the recipe gives one
    assert "named SmolLM" in tokenizer.decode(encoded[2].input_ids)
    assert "named SmolLM" not in tokenizer.decode(encoded[0].input_ids)
    # last_turn and all
    last = encode_examples(tokenizer, template, examples[:1], 4096, "last_turn")[0]
    assert tokenizer.decode([t for t in last.labels if t != IGNORE]) == "<|im_end|>\n"
    every = encode_examples(tokenizer, template, examples[:1], 4096, "all")[0]
    assert every.labels[1:] == every.input_ids[1:]
    # each conversation is rendered twice a trained turn (the whole conversation is its last turn's rendering)
    calls = []
    real = tokenizer.apply_chat_template
    tokenizer.apply_chat_template = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        assert encode_examples(tokenizer, template, examples, 4096) == encoded
    finally:
        tokenizer.apply_chat_template = real
    assert len(calls) == 2 * 3 + 2 * 2 + 2  # CONVERSATION's 3 assistant turns, the second's 2, the single turn's 1


def test_the_run_system_prompt_and_template_variables(tokenizer):
    template = PromptTemplate("model", system="你是一个计算器。")
    enc = encode_examples(tokenizer, template, [Example("s", "What is 2 + 3?", "5")], 4096)[0]
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\n你是一个计算器。<|im_end|>") and "SmolLM" not in text
    # a conversation's own system turn wins over the recipe's
    conv = encode_examples(tokenizer, template, [Example("c", "x", "", messages=CONVERSATION)], 4096)[0]
    assert "You answer briefly." in tokenizer.decode(conv.input_ids)
    dated = PromptTemplate("model", kwargs=(("date_string", "26 Jul 2024"),))
    tokenizer.chat_template = DATED
    try:
        prompt = dated.bind(tokenizer).render("Hi")
        ids, labels = _reference(tokenizer, CONVERSATION[1:3], date_string="26 Jul 2024")
        enc = encode_examples(tokenizer, dated, [Example("s", "What is 2 + 3?", "5")], 4096)[0]
    finally:
        tokenizer.chat_template = CHATML
    assert prompt == ("<|begin|><|start_header_id|>user<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt.count("<|begin|>") == 1  # the template writes BOS; tokenising adds no second one
    assert enc.input_ids == ids and enc.labels == labels


def test_prompts_and_few_shot_turns(tokenizer):
    template = PromptTemplate("model").bind(tokenizer)
    ex = Example("q", "What is 2 + 3?", "5")
    assert template.render_prompt(ex) == tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    shots = [Example("a", "1 + 1?", "2"), Example("b", "北京在哪里？", "北京在中国。")]
    assert template.render_prompt(ex, shots) == tokenizer.apply_chat_template(
        [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"},
         {"role": "user", "content": "北京在哪里？"}, {"role": "assistant", "content": "北京在中国。"},
         {"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    # a conversation's prompt is every turn before its last answer; a system turn stays first, before the shots
    conv = Example("c", "Say nothing.", "", messages=CONVERSATION)
    assert template.prompt_messages(conv, shots[:1])[:3] == [
        CONVERSATION[0], {"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]
    assert template.prompt_messages(conv)[-1] == {"role": "user", "content": "Say nothing."}
    # tunelab's templates keep their single-turn prompt byte for byte; shots become earlier turns ending in EOS
    alpaca = PromptTemplate("alpaca").bind(tokenizer)
    assert alpaca.render_prompt(ex) == alpaca.render("What is 2 + 3?")
    assert alpaca.render_prompt(ex, shots[:1]) == alpaca.render("1 + 1?") + "2" + tokenizer.eos_token + \
        alpaca.render("What is 2 + 3?")


def test_tunelab_templates_train_every_assistant_turn(tokenizer):
    template = PromptTemplate("alpaca")
    enc = encode_examples(tokenizer, template, [Example("c", "x", "", messages=CONVERSATION)], 4096)[0]
    eos = tokenizer.eos_token
    trained = tokenizer.decode([t for t in enc.labels if t != IGNORE])
    assert trained == f"5{eos}北京在中国。{eos}{eos}"
    assert tokenizer.decode(enc.input_ids) == template.bind(tokenizer).render_messages(CONVERSATION, False)
    last = encode_examples(tokenizer, template, [Example("c", "x", "", messages=CONVERSATION)], 4096, "last_turn")[0]
    assert tokenizer.decode([t for t in last.labels if t != IGNORE]) == eos


def test_auto_resolves_to_the_models_own_template(tokenizer, tmp_path):
    auto = PromptTemplate("auto")
    assert auto.resolve(tokenizer).name == "model"
    save_template(PromptTemplate("alpaca"), tmp_path)  # a model tunelab made: the template it was trained with
    assert auto.resolve(tokenizer, tmp_path).name == "alpaca"
    bare = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token=tokenizer.eos_token)
    assert auto.resolve(bare).name == "alpaca"  # no chat template: tunelab's default
    with pytest.raises(TunelabError, match="has no chat template"):
        PromptTemplate("model").bind(bare)
    # a model template is saved with its settings and never replaces the model's own
    template = PromptTemplate("model", system="Be brief.", kwargs=(("date_string", "1 Jan 2025"),))
    save_template(template, tmp_path)
    saved = json.loads((tmp_path / "tunelab_template.json").read_text())
    assert saved["name"] == "model" and saved["system"] == "Be brief." and saved["kwargs"] == {
        "date_string": "1 Jan 2025"}
    assert template.bind(tokenizer).chat_template() == CHATML


def test_a_failing_template_is_one_line_naming_the_example(tokenizer):
    tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
    try:
        with pytest.raises(TunelabError) as e:
            encode_examples(tokenizer, PromptTemplate("model"), [Example("x-3", "q", "a")], 64)
    finally:
        tokenizer.chat_template = CHATML
    assert "example x-3" in e.value.message and "System role not supported" in e.value.message


def test_packed_conversations_with_a_shared_system_prompt_equal_unpacked(tokenizer):
    """The template's default system prompt is the same prefix on every sample: held once a row, the per-sample
    logits equal each sample run alone (SDPA; the loss module's masks for eager and tunelab's CPU attention are
    checked on the same rows by test_share_prefix.py)."""
    from tunelab.model.loading import build_from_scratch
    examples = [Example(f"s{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(12)]
    examples += [Example("c", "北京在哪里？", "北京在中国。", messages=CONVERSATION[1:5])]
    encoded = encode_examples(tokenizer, PromptTemplate("model"), examples, max_len=512)
    h = shared_prefix(encoded)
    assert h >= 10 and tokenizer.decode(encoded[0].input_ids[:h]).startswith("<|im_start|>system\nYou are a helpful")
    torch.manual_seed(0)
    model = build_from_scratch("micro", len(tokenizer), {}, tokenizer).eval()
    rows = pack_examples(encoded, 512, prefix=h)
    assert len(rows) < len(encoded)
    batch = collate_rows(rows, tokenizer.pad_token_id, True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
        for r, row in enumerate(rows):
            for k in range(1, max(row.segments) + 1):
                at = list(range(h)) + [i for i, s in enumerate(row.segments) if s == k]
                ids = torch.tensor([[row.input_ids[i] for i in at]])
                alone = model(input_ids=ids).logits[0]
                torch.testing.assert_close(logits[r, at], alone, rtol=1e-4, atol=1e-5)
