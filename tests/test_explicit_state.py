"""State a caller can see: a tokenizer is given its chat template as a copy (`with_chat_template`), never changed
behind its holder's back, and saves the same files the changed one did; a serving engine runs only between its
owner's `start` and `close`."""

from __future__ import annotations

import threading

import pytest
import torch

from tunelab.data.templates import PromptTemplate, tokenizer_speaking, with_chat_template


@pytest.fixture(scope="module")
def plain_tokenizer():
    from tunelab.model.tokenizer import train_bpe_tokenizer
    return train_bpe_tokenizer(["What is 2 + 3? 5", "北京在哪里？北京在中国。"] * 30, 300)


def test_binding_a_template_leaves_the_callers_tokenizer_alone(plain_tokenizer):
    alpaca = PromptTemplate("alpaca").bind(plain_tokenizer)
    bound = tokenizer_speaking(alpaca, plain_tokenizer)
    assert plain_tokenizer.chat_template is None
    assert bound is not plain_tokenizer and bound.chat_template == alpaca.chat_template()
    assert bound("What is 2 + 3?")["input_ids"] == plain_tokenizer("What is 2 + 3?")["input_ids"]
    assert with_chat_template(bound, alpaca.chat_template()) is bound          # it speaks it already: no copy
    chat = PromptTemplate("model").bind(bound)
    assert tokenizer_speaking(chat, bound) is bound                             # a model's own template is kept


def test_the_bound_copy_saves_the_files_the_changed_tokenizer_saved(plain_tokenizer, tmp_path):
    """A run's saved tokenizer is what it was when training set the template on the loaded tokenizer itself."""
    import copy
    template = PromptTemplate("qa").chat_template()
    with_chat_template(plain_tokenizer, template).save_pretrained(tmp_path / "bound")
    changed = copy.deepcopy(plain_tokenizer)
    changed.chat_template = template                                           # what training did before
    changed.save_pretrained(tmp_path / "changed")
    names = sorted(p.name for p in (tmp_path / "changed").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "bound").iterdir())
    for name in names:
        assert (tmp_path / "bound" / name).read_bytes() == (tmp_path / "changed" / name).read_bytes(), name


def _tiny_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                        eos_token_id=0, bos_token_id=0, pad_token_id=1)).eval()


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunelab-engine"]


def test_an_engine_runs_only_between_start_and_close(plain_tokenizer):
    from tunelab.serve.engine import Engine, SamplingParams, Sequence
    before = len(_engine_threads())
    engine = Engine(_tiny_model(len(plain_tokenizer)), plain_tokenizer, max_batch=2)
    assert len(_engine_threads()) == before                                    # made, not started: no thread
    with pytest.raises(RuntimeError, match="not started"):
        engine.submit([Sequence([5, 6, 7], SamplingParams(max_tokens=2, temperature=0), lambda out: None)])
    with engine:
        assert engine.start() is engine and len(_engine_threads()) == before + 1   # started once
        outs = list(engine.stream([5, 6, 7], SamplingParams(max_tokens=3, temperature=0)))
        assert outs[-1].finish_reason is not None
    assert len(_engine_threads()) == before
    engine.close()                                                             # again: nothing more happens
    with pytest.raises(RuntimeError, match="closed"):
        engine.start()
    Engine(_tiny_model(len(plain_tokenizer)), plain_tokenizer).close()         # never started: closes all the same


def test_a_served_model_serves_a_tokenizer_without_a_template_through_its_own_copy(plain_tokenizer):
    from tunelab.serve.models import FALLBACK_CHAT_TEMPLATE, ServedModel
    with ServedModel(_tiny_model(len(plain_tokenizer)), plain_tokenizer, "tiny", max_batch=2) as served:
        assert plain_tokenizer.chat_template is None
        assert served.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
        assert served.render_chat([{"role": "user", "content": "hi"}]) == "user: hiassistant:"  # the fallback
    assert not served.engine._thread.is_alive()
