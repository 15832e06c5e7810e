"""The decoding core's contracts: which tokens stop an answer, safe sampling, text and stop strings."""

from __future__ import annotations

import pytest
import torch

from tunelab.decoding.embedded import generate_batched
from tunelab.decoding.sampling import SamplingParams, sample_tokens
from tunelab.decoding.stops import end_of_turn_id, pad_token_id, stop_token_ids
from tunelab.decoding.text_stream import TextStream

LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A byte-level BPE with Llama-3's and ChatML's special tokens, EOS <|end_of_text|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|im_start|>", "<|im_end|>"]
    text = ["hello world, 1 + 1 = 2; user assistant system. The stop word END ends it."] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def _with_template(tokenizer, template):
    import copy
    t = copy.deepcopy(tokenizer)
    t.chat_template = template
    return t


def test_end_of_turn_is_read_from_the_chat_template(chat_tokenizer):
    from tunelab.data.templates import PromptTemplate
    tok = chat_tokenizer
    assert end_of_turn_id(_with_template(tok, LLAMA3_TEMPLATE)) == tok.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_id(_with_template(tok, CHATML_TEMPLATE)) == tok.convert_tokens_to_ids("<|im_end|>")
    # tunelab's own templates end an answer with EOS; a continuation template ends it with nothing
    assert end_of_turn_id(_with_template(tok, PromptTemplate("alpaca").chat_template())) == tok.eos_token_id
    assert end_of_turn_id(_with_template(tok, PromptTemplate("none").chat_template())) is None
    assert end_of_turn_id(_with_template(tok, "{{ messages[0]['content'] }}\nEND")) is None   # text, not a token
    assert end_of_turn_id(_with_template(tok, "{% if true %}")) is None                       # broken template
    assert end_of_turn_id(_with_template(tok, None)) is None


def test_stop_set_is_eos_generation_config_and_end_of_turn(chat_tokenizer):
    from types import SimpleNamespace
    tok = _with_template(chat_tokenizer, CHATML_TEMPLATE)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|eot_id|>")
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[eot, tok.eos_token_id]))
    assert stop_token_ids(model, tok) == {tok.eos_token_id, eot, im_end}
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eot))
    assert stop_token_ids(model, _with_template(chat_tokenizer, None)) == {tok.eos_token_id, eot}
    assert pad_token_id(tok) == tok.eos_token_id  # no pad token: EOS pads


def _params(**kw) -> SamplingParams:
    return SamplingParams(**kw)


def test_sampling_is_safe_at_extreme_settings():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 30
    greedy = logits.argmax(-1).tolist()
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    # a tiny temperature, top_p 0 and top_k 1 all mean the argmax; none overflows into NaN
    for p in (_params(temperature=1e-30), _params(temperature=1.0, top_p=0.0), _params(temperature=5.0, top_k=1)):
        assert sample_tokens(logits, [p] * 4, gens) == greedy
    huge = logits.clone()
    huge[:, 7] = float("inf")
    assert sample_tokens(huge, [_params(temperature=0.7)] * 4, gens) == [7] * 4
    nan = logits.clone()
    nan[:, 3] = float("nan")
    for p in (_params(temperature=0), _params(temperature=1.0)):
        assert 3 not in sample_tokens(nan, [p] * 4, gens)
    masked = torch.full((1, 50), float("-inf"))
    assert sample_tokens(masked, [_params(temperature=1.0)], gens[:1]) == [0]  # nothing allowed: no crash


def test_a_seed_reproduces_a_draw_whatever_shares_the_batch():
    torch.manual_seed(1)
    logits = torch.randn(3, 100)
    p = _params(temperature=1.3, top_p=0.9, top_k=40)

    def draw(rows):
        return sample_tokens(logits[rows], [p] * len(rows), [torch.Generator().manual_seed(42) for _ in rows])

    alone = [draw([i])[0] for i in range(3)]
    assert draw([0, 1, 2]) == alone
    counts = torch.bincount(torch.tensor([sample_tokens(logits[:1], [p], [torch.Generator().manual_seed(s)])[0]
                                          for s in range(300)]), minlength=100)
    assert (counts > 0).sum() > 3  # it does sample


def test_text_stream_cuts_at_the_first_stop_string_and_holds_back_a_partial_one(chat_tokenizer):
    tok = chat_tokenizer
    ids = tok("The stop word END ends it. 中文也行", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=("word END", "ends"))
    shown = 0
    pieces = []
    for t in ids:
        done = stream.add(t)
        safe = stream.safe_length(shown)
        assert safe >= shown
        pieces.append(stream.text[shown:safe])
        shown = safe
        if done:
            break
    assert stream.stopped and stream.text == "The stop "
    assert "".join(pieces) == "The stop "          # nothing of the stop string was ever shown
    assert stream.add(ids[-1]) and stream.text == "The stop "  # later tokens are ignored

    plain = TextStream(tok)
    for t in ids:
        plain.add(t)
    plain.add(None, final=True)
    assert plain.text == "The stop word END ends it. 中文也行"  # multi-byte characters across byte tokens


def test_generate_with_stop_strings_is_generate_cut_at_them(tiny_base):
    from tunelab.model.loading import load_for_inference
    model, tokenizer = load_for_inference(str(tiny_base))
    prompts = ["1 + 1 =", "What is 12 + 30?", "阅读下面的文章", "x"]
    full = generate_batched(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, progress=False)
    stops = sorted({t[len(t) // 2: len(t) // 2 + 2] for t in full if len(t) > 4})
    assert stops, full
    cut = generate_batched(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, progress=False,
                           stop=tuple(stops))
    for text, got in zip(full, cut):
        hits = [text.find(s) for s in stops if s in text]
        assert got == (text[:min(hits)] if hits else text)


def test_completions_say_whether_they_stopped_or_ran_out_of_tokens(tiny_base):
    from tunelab.data.templates import PromptTemplate
    from tunelab.decoding.embedded import complete_batched
    from tunelab.model.loading import load_for_inference
    model, tokenizer = load_for_inference(str(tiny_base))
    prompts = [PromptTemplate("alpaca").render(p) for p in ("12 + 30 = ?", "计算 7 - 3", "5 + 5 = ?")]
    long = complete_batched(model, tokenizer, prompts, max_new_tokens=40, batch_size=2, progress=False)
    short = complete_batched(model, tokenizer, prompts, max_new_tokens=1, batch_size=2, progress=False)
    assert [c.text for c in long] == generate_batched(model, tokenizer, prompts, max_new_tokens=40, progress=False)
    assert any(c.finish_reason == "stop" for c in long), long  # the trained base ends some answers itself
    for lc, sc in zip(long, short):
        assert lc.text.startswith(sc.text)
        # one token: a real token runs out of room, a stop token at once is a stop with no text
        assert sc.finish_reason == ("stop" if sc.text == "" else "length")
