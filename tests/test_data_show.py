"""`tunelab data show RECIPE`: the first training examples as the model sees them. On a ChatML model with a
3-turn `messages` file that has a system turn: `--json` gives ids equal to `apply_chat_template` and labels on
exactly the assistant turns (each answer and its end of turn), the terminal form marks the same tokens, and the
same file trains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_archs import build_smol  # noqa: E402

CONVERSATIONS = [
    {"messages": [{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
                  {"role": "user", "content": "北京是哪个国家的首都？"}, {"role": "assistant", "content": "中国。"},
                  {"role": "user", "content": "And 12 + 30?"}, {"role": "assistant", "content": "42"}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
]


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return build_smol(tmp_path_factory.mktemp("smol") / "smol")


@pytest.fixture
def recipe(smol, make_recipe, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    return make_recipe("chat", model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                                      "path": str(smol)},
                       data={"template": "auto", "share_prefix": True, "max_seq_len": 512, "train": [{"path": str(data)}]},
                       lora={"enabled": True}, train={"max_steps": 2, "batch_size": 1, "num_checkpoints": 1})


def test_json_ids_are_the_chat_template_and_labels_the_assistant_turns(recipe, smol, capsys):
    from transformers import AutoTokenizer

    from tunelab.cli import main
    assert main(["data", "show", str(recipe), "--json", "--n", "5"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == 2
    tok = AutoTokenizer.from_pretrained(smol)
    for row, conv in zip(shown, CONVERSATIONS):
        messages = conv["messages"]
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert row["input_ids"] == ids
        expected = [-100] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                start = len(tok.apply_chat_template(messages[:i], tokenize=True, return_dict=True,
                                                    add_generation_prompt=True)["input_ids"])
                end = len(tok.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=True)["input_ids"])
                expected[start:end] = ids[start:end]
        assert row["labels"] == expected
    trained = tok.decode([t for t in shown[0]["labels"] if t != -100])
    assert trained == "5<|im_end|>\n中国。<|im_end|>\n42<|im_end|>\n"
    # the second conversation has no system turn: the template's default one is kept
    assert shown[1]["text"].startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_the_terminal_form_marks_the_trained_tokens(recipe, capsys):
    from tunelab.cli import main
    assert main(["data", "show", str(recipe), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "template 'model'" in out and "[[5<|im_end|>\n]]" in out and "[[42<|im_end|>\n]]" in out
    assert "[[What is 2 + 3?" not in out


def test_the_conversations_train(recipe):
    from tunelab.pipeline import train_recipe
    from tunelab.recipe import load_recipe
    assert train_recipe(load_recipe(recipe))["steps"] == 2
