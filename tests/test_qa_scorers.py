"""Each QA scorer against a transcription of its reference script (tests/qa_references.py) on a few hundred
generated answers: English, Chinese, mixed, punctuation, numbers, white space, contractions, abbreviations
with periods, version-like numbers, unit symbols, minus signs, ellipses."""

from __future__ import annotations

import random

import nltk
import pytest

import qa_references as ref
from tunelab.metrics.qa_metrics import (em_f1, em_f1_mindformers, first_line, jieba_cut, tokens_cmrc,
                                     tokens_mindformers, word_tokenize)

pytest.importorskip("punkt")
pytest.importorskip("jieba")

EN = ["the", "The", "a", "An", "Denver", "Broncos", "Super", "Bowl", "won", "in", "of", "and", "Paris", "tower",
      "Levi's", "rock-and-roll", "self-driving", "He", "However", "It", "They", "said", "went", "left", "home",
      "C#", "c#1.5%", "AT&T", "R&D", "x_y", "café", "naïve", "İstanbul"]
ABBREV = ["U.S.", "Mr.", "Dr.", "e.g.", "i.e.", "a.m.", "p.m.", "etc.", "St.", "No.", "Jr.", "Inc.", "Ph.D.",
          "vs.", "Fig.", "J.", "N.Y.", "Oct."]
CONTRACTIONS = ["can't", "don't", "I'm", "it's", "won't", "o'clock", "they'll", "we've", "ma'am", "y'all",
                "'90s", "rock'n'roll", "gonna", "cannot", "Broncos'"]
ZH = ["郑州市", "河南", "省会", "北京大学", "中华人民共和国", "年", "月", "的", "是", "第二", "鿦", "鿦鿧", "a鿦鿦b", "㐀", "の",
      "한국", "人工智能", "龘", "長城"]
NUMBERS = ["1889", "3.14", "1,000", "10,000.5", "-5", "\u22125", "+7", "2.0.1", "v1.2", "1e5", "50%", "1/2",
           "2008", "０１２", "½", "²", "٣", "0.5", ".5", "5.", "1-2", "12:30", "#1", "3rd", "1990s"]
UNITS = ["km/h", "°C", "℃", "m²", "µm", "μm", "kg", "$5", "￥100", "€", "5km", "3.5kg", "100m", "10%", "5 %",
         "$1.5 million", "US$", "~10", "≈3", "±2"]
PUNCT = list(",.;:!?'\"()[]{}<>-_*^/\\~`+=@#%&|") + [
    "，", "。", "：", "？", "！", "“", "”", "；", "’", "‘", "《", "》", "……", "…", "·", "、", "「", "」", "（", "）", "－",
    "～", "『", "』", "—", "–", "‐", "``", "''", "--"]
ELLIPSES = ["...", "…", "……", ". . .", "....", "?!", "!!", "..."]
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\u3000", "\u00a0", "\u2009", "\r\n", ""]
KINDS = [EN, EN, ABBREV, CONTRACTIONS, ZH, ZH, NUMBERS, UNITS, PUNCT, ELLIPSES]


def _text(rng: random.Random, n: int) -> str:
    parts = []
    for _ in range(n):
        parts.append(rng.choice(rng.choice(KINDS)))
        parts.append(rng.choice(SPACES))
    return "".join(parts)


def _prediction(rng: random.Random, gold: str) -> str:
    """A prediction near the gold (the interesting case for F1), or unrelated."""
    how = rng.randrange(6)
    if how == 0:
        return gold
    if how == 1:
        return rng.choice(["The answer is ", "答案是", "", "  "]) + gold + rng.choice(["", ".", "。", "!", "..."])
    if how == 2:
        return gold.upper() if rng.random() < 0.5 else gold.swapcase()
    if how == 3:
        words = gold.split(" ")
        keep = [w for w in words if rng.random() < 0.7]
        return " ".join(keep) + " " + _text(rng, rng.randint(0, 2))
    if how == 4:
        return _text(rng, rng.randint(0, 3)) + gold[: rng.randint(0, len(gold))] + "\n" + _text(rng, 2)
    return _text(rng, rng.randint(1, 8))


def _cases(seed: int, n: int = 400) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        golds = [_text(rng, rng.randint(1, 6)) for _ in range(rng.randint(1, 3))]
        cases.append((_prediction(rng, rng.choice(golds)), golds))
    return cases


@pytest.fixture(scope="module")
def nltk_punkt(tmp_path_factory):
    """NLTK's own word_tokenize with the punkt_tab English model installed in a temporary data dir."""
    root = str(ref.punkt_data_dir(tmp_path_factory.mktemp("nltk_data")))
    nltk.data.path.insert(0, root)
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    yield
    nltk.data.path.remove(root)
    nltk.tokenize._get_punkt_tokenizer.cache_clear()


def test_official_matches_squad_script():
    for pred, golds in _cases(1):
        em = ref.squad_max_over_ground_truths(ref.squad_exact_match_score, pred, golds)
        f1 = ref.squad_max_over_ground_truths(ref.squad_f1_score, pred, golds)
        assert em_f1(pred, golds, "official") == (float(em), f1), (pred, golds)


def test_cmrc_matches_cmrc2018_script(nltk_punkt):
    differ_without_punkt = 0
    for pred, golds in _cases(2):
        for text in [pred, *golds]:
            expected = ref.mixed_segmentation(text, ref.nltk_cut, rm_punc=True)
            assert tokens_cmrc(text) == expected, text
            differ_without_punkt += expected != ref.mixed_segmentation(
                text, lambda s: nltk.word_tokenize(s, preserve_line=True), rm_punc=True)
        em, f1 = ref.cmrc_scores(golds, pred)
        assert em_f1(pred, golds, "cmrc") == (float(em), f1), (pred, golds)
    assert differ_without_punkt > 10  # the sentence split matters on these strings: punkt is really used


def test_mindformers_matches_emf1metric():
    for pred, golds in _cases(3):
        gold = golds[0]
        for text in [pred, gold]:
            assert tokens_mindformers(text) == ref.mixed_segmentation(text, ref.jieba_cut, rm_punc=True), text
        em, f1 = ref.mindformers_scores(gold, pred)
        assert em_f1_mindformers(first_line(pred), gold) == (float(em), f1), (pred, gold)


def test_jieba_cut_is_jieba_on_runs_without_chinese():
    """The linear-time cut of a run equals jieba's own, on the cases its rules name."""
    for run in ["hello world", "i love beijing, because it's beautiful", "3.14 and 50% e.g. c++ c#", "c#c#",
                "  two  spaces\tx\r\ny", "don't", "café", "version 2.0.1", "1.5.6", "abc++d", "r&d at&t", "a%b-c_d",
                "ab1.5c#", "#c#", "x..y", "鿦鿦", "a鿦鿦b", "㐀㐁", "\u3000x\u3000", "١٢٣ ٤"]:
        assert jieba_cut(run) == ref.jieba_cut(run), run


def test_word_tokenize_needs_no_nltk_data(monkeypatch):
    """The punkt model comes from the installed wheel: an empty NLTK data path changes nothing."""
    monkeypatch.setattr(nltk.data, "path", [])
    assert word_tokenize("Mr. Smith paid $5.50 at 3 p.m. He left... Really?") == [
        "Mr.", "Smith", "paid", "$", "5.50", "at", "3", "p.m", ".", "He", "left", "...", "Really", "?"]
    # a sentence's final period is cut, an abbreviation's is not; one-line tokenizing keeps "went."
    assert word_tokenize("Dr. Who went. He said \"hi.\"") == [
        "Dr.", "Who", "went", ".", "He", "said", "``", "hi", ".", "''"]
    assert nltk.word_tokenize("Dr. Who went. He", preserve_line=True) == ["Dr.", "Who", "went.", "He"]
