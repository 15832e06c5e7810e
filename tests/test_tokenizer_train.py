"""`tunelab tokenizer train`: CJK-aware byte-level BPE from the cleaned corpus, special tokens, measurement."""

from __future__ import annotations

import json
import random
import re

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.model.tokenizer import train_bpe_tokenizer

ZH = "北京上海铁路车站物种化合物人物地方发现命名位于开通年份研究描述城市河流山脉博物馆"
EN = ["the", "station", "railway", "species", "was", "first", "described", "in", "London", "by", "river"]


def _write(path, n=300, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            zh = "".join("".join(rng.choice(ZH) for _ in range(rng.randint(4, 12))) + rng.choice("，。！")
                         for _ in range(rng.randint(3, 8)))
            en = " ".join(rng.choice(EN) for _ in range(rng.randint(5, 20))) + f" {rng.randint(10, 99999)}."
            text = zh if i % 3 else en
            f.write(json.dumps({"text": f"标题{i}\n\n{text}Python版本{i}，"}, ensure_ascii=False) + "\n")


def test_tokenizer_train_cli(tmp_path, capsys):
    from transformers import AutoTokenizer
    src = tmp_path / "c.jsonl"
    _write(src)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(src), "--vocab-size", "600", "--out", str(out),
                 "--val-fraction", "0.2", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"characters per token on held-out documents: all [\d.]+ .*zh [\d.]+ .*en [\d.]+", printed)
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token, tok.sep_token) == ("<|endoftext|>", "<|pad|>", "<|sep|>")
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|pad|>", "<|sep|>")] == [0, 1, 2]
    assert len(tok) == 600 and "asked" not in printed
    report = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert report["documents"]["val"] > 0 and set(report["held_out"]) == {"all", "zh", "en"}
    # digits one by one; CJK punctuation alone; CJK never merged with Latin letters
    assert len(tok.tokenize("12345")) == 5
    vocab = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab()]
    assert not [t for t in vocab if re.search(r"[\u4e00-\u9fff]", t) and re.search(r"[A-Za-z]", t)]
    assert not [t for t in vocab if len(t) > 1 and re.search("[，。！]", t)]
    assert any(len(t) >= 2 and re.fullmatch(r"[\u4e00-\u9fff]+", t) for t in vocab)   # Chinese words merge
    text = "北京铁路车站 the railway station 2024年，“引号”！"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tokenizer_train_refuses_existing_out_and_reports_bad_lines(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    _write(src, n=40)
    with open(src, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(src), "--vocab-size", "400", "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{src}:41" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    assert main(["tokenizer", "train", str(src), "--vocab-size", "400", "--out", str(out), "--workers", "1",
                 "--skip-bad"]) == 0
    assert "1 bad lines" in capsys.readouterr().out
    assert main(["tokenizer", "train", str(src), "--vocab-size", "400", "--out", str(out)]) == 2


def test_a_vocabulary_smaller_than_asked_says_why(tmp_path, capsys):
    """Too little text for the size asked: BPE stops when nothing is left to merge, and the user is told so
    instead of finding 19,484 where 32,000 was asked."""
    src = tmp_path / "c.jsonl"
    _write(src, n=40)
    assert main(["tokenizer", "train", str(src), "--vocab-size", "60000", "--out", str(tmp_path / "tok"),
                 "--workers", "1"]) == 0
    report = json.loads((tmp_path / "tok" / "training.json").read_text(encoding="utf-8"))
    assert report["vocab_size"] < report["vocab_size_asked"] == 60000
    assert (f"vocabulary {report['vocab_size']}, fewer than the 60000 asked: every pre-token of the training text "
            "is already one token") in capsys.readouterr().out


@pytest.mark.parametrize("size", [10, 2 ** 31, 10 ** 12])
def test_a_vocabulary_size_out_of_range_is_refused_before_training(tmp_path, capsys, size):
    # 2**31 made the BPE trainer abort the process on a 141 GB allocation: no message, no exit code to read
    src = tmp_path / "c.jsonl"
    _write(src, n=10)
    assert main(["tokenizer", "train", str(src), "--vocab-size", str(size), "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size must be between 300" in err and "Traceback" not in err
    assert not (tmp_path / "tok").exists()
    with pytest.raises(TunelabError, match="vocab_size must be between"):  # a Python call: the argument's name
        train_bpe_tokenizer(["some text"], size)
