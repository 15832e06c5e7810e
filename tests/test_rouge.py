"""Rouge-L: segmentations, known LCS values, both backends agree, and the rougel task."""

from __future__ import annotations

import sys

import pytest

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics import rouge
from tunelab.metrics.rouge import resolve_segmentation, rouge_l, summarize_rouge, tokenize
from tunelab.tasks.registry import get_task


@pytest.fixture(params=["builtin", "rouge-score"])
def backend(request, monkeypatch):
    """Run a test with the hand-written LCS and (when installed) with the rouge-score package."""
    if request.param == "rouge-score":
        pytest.importorskip("rouge_score")
        monkeypatch.setattr(rouge, "_backend", None)
    else:
        monkeypatch.setattr(rouge, "_backend", False)
    monkeypatch.setattr(rouge, "_scorers", {})
    assert rouge.backend() == request.param
    return request.param


def test_tokenizers():
    assert tokenize("我爱北京，天安门！", "char") == ["我", "爱", "北", "京", "天", "安", "门"]
    assert tokenize("GPU训练2x快", "char") == ["gpu", "训", "练", "2x", "快"]
    assert tokenize("The cat's mat, 2024!", "word") == ["the", "cat", "s", "mat", "2024"]
    assert tokenize("The cat's mat", "char") == tokenize("The cat's mat", "word")


def test_auto_segmentation():
    assert resolve_segmentation("auto", "hello", "世界") == "char"
    assert resolve_segmentation("auto", "hello", "world") == "word"
    with pytest.raises(TunelabError, match="unknown segmentation"):
        resolve_segmentation("bpe", "x")


def test_chinese_char_level_is_nonzero_where_words_give_zero(backend):
    pred, ref = "我爱北京", "我爱北京天安门"
    char = rouge_l(pred, ref, "char")
    assert char["segmentation"] == "char"
    assert (char["precision"], char["recall"]) == (1.0, pytest.approx(4 / 7))
    assert char["fmeasure"] == pytest.approx(8 / 11)
    assert rouge_l(pred, ref, "word")["fmeasure"] == 0.0  # each run of Chinese is one "word"
    assert rouge_l(pred, ref)["segmentation"] == "char"   # auto


def test_rouge_score_default_tokenizer_scores_chinese_zero():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    assert rouge_scorer.RougeScorer(["rougeL"]).score("我爱北京天安门", "我爱北京")["rougeL"].fmeasure == 0


@pytest.mark.parametrize("pred, ref, p, r", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6, 5 / 6),   # LCS: the cat on the mat
    ("A B C D", "B D A", 2 / 4, 2 / 3),                                  # LCS: B D
    ("police killed the gunman", "police kill the gunman", 3 / 4, 3 / 4),  # no stemming
    ("The Cat.", "the cat", 1.0, 1.0),                                   # case and punctuation
    ("", "the cat", 0.0, 0.0),
    ("dog", "the cat", 0.0, 0.0),
])
def test_english_word_level(backend, pred, ref, p, r):
    s = rouge_l(pred, ref, "word")
    f = 2 * p * r / (p + r) if p + r else 0.0
    assert (s["precision"], s["recall"], s["fmeasure"]) == (pytest.approx(p), pytest.approx(r), pytest.approx(f))
    assert rouge_l(pred, ref)["fmeasure"] == pytest.approx(f)  # auto = word on English


def test_backends_agree(monkeypatch):
    pytest.importorskip("rouge_score")
    pairs = [("今天天气很好，我们去公园散步吧", "今天天气不错，我们去公园"), ("a b c a b", "b a b c a"),
             ("模型在GPU上训练了3个小时", "在GPU上训练模型用了三个小时"), ("x y z", "z y x")]
    results = {}
    for name, value in (("builtin", False), ("rouge-score", None)):
        monkeypatch.setattr(rouge, "_backend", value)
        monkeypatch.setattr(rouge, "_scorers", {})
        results[name] = [rouge_l(p, r) for p, r in pairs]
    for a, b in zip(results["builtin"], results["rouge-score"]):
        assert a["fmeasure"] == pytest.approx(b["fmeasure"]) and a["precision"] == pytest.approx(b["precision"])


def test_multiple_references_take_the_best(backend):
    s = rouge_l("the cat sat", ["a dog ran", "the cat sat"])
    assert s["fmeasure"] == 1.0


def test_corpus_means_and_recorded_segmentation(backend):
    def corpus(predictions, references, segmentation="auto"):  # as the rougel task grades, then summarizes
        return summarize_rouge([rouge_l(p, r, segmentation) for p, r in zip(predictions, references)],
                               segmentation)
    zh = corpus(["我爱北京", "你好"], ["我爱北京天安门", "你好"])
    assert zh["segmentation"] == "char" and zh["n"] == 2 and zh["backend"] == backend
    assert zh["rougeL_f"] == pytest.approx(100 * (8 / 11 + 1) / 2)
    mixed = corpus(["你好", "hello there"], ["你好", "hello"])
    assert mixed["segmentation"] == "auto (char 1, word 1)"
    assert corpus(["你好"], ["你好"], "word")["segmentation"] == "word"


def test_jieba_segmentation(backend):
    pytest.importorskip("jieba")
    s = rouge_l("我爱北京天安门", "我爱北京", "jieba")
    assert s["segmentation"] == "jieba" and 0 < s["fmeasure"] < 1
    assert "，" not in tokenize("我爱北京，天安门", "jieba")


def test_jieba_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` raise ImportError
    with pytest.raises(TunelabError, match="pip install jieba"):
        rouge_l("我爱北京", "我爱北京天安门", "jieba")


def test_rougel_task(backend):
    task = get_task("rougel")
    assert task.primary_metric == "rougeL_f"
    ex = Example(id="1", instruction="写一句话", output="我爱北京天安门")
    graded = [task.grade("我爱北京天安门\n", ex), task.grade("我爱北京", ex)]
    assert graded[0]["correct"] and not graded[1]["correct"] and graded[1]["segmentation"] == "char"
    summary = task.summarize(graded)
    assert summary["rougeL_f"] == pytest.approx(100 * (1 + 8 / 11) / 2) and summary["segmentation"] == "char"
