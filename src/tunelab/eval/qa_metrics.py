"""Extractive-QA metrics: exact match and F1 in three scorer modes, each matching a reference script.

`official` — SQuAD v1.1's evaluate-v1.1.py: lower-case, drop ASCII punctuation (string.punctuation), drop
  the articles a/an/the, collapse white space; EM is equality of the normalised strings, F1 is over bags of
  white-space tokens. (As in v1.1, two empty answers have EM 1 and F1 0.)
`cmrc` — CMRC2018's evaluation script: lower-case and strip, delete the CMRC2018 punctuation set
  (CMRC_PUNCT below: `- : _ * ^ / \\ ~ ` + =` and the Chinese marks; ASCII , . ! ? ' " ( ) are NOT in it),
  every CJK character (U+4E00–U+9FA5) is one token, the runs between them are word-tokenised; F1 is from the
  longest common *contiguous* token run (the script's find_lcs), EM is equality after deleting the
  punctuation set only (inner white space counts). CMRC2018 word-tokenises runs with nltk.word_tokenize,
  which needs a downloaded model; here a run is split into numbers ("3.14", "1,000"), words (\\w+) and
  single other characters, white space dropped — the same tokens for the answer spans QA scores.
`mindformers` — MindFormers' EmF1Metric: the same as `cmrc` except that runs are cut with jieba.cut, which
  keeps every white-space character as a token and yields words, numbers ("2.0", "50%") and single
  punctuation characters. jieba's cutting of non-Chinese text is reproduced here without jieba (the only
  dictionary words it could match are "c++" and "c#"), so this mode needs no extra package. MindFormers
  scores only the first line of a generation (`first_line`) against one answer; the SQuAD task applies that.
`auto` picks `cmrc` when the gold text holds CJK characters, else `official`.

Scores are 0–1 per item; callers report them ×100 as SQuAD does. Golds may be a list: EM and F1 are each
the maximum over the gold answers (as both reference scripts do).
"""

from __future__ import annotations

import re
import string
from collections import Counter

from tunelab.errors import TunelabError

SCORERS = ("official", "cmrc", "mindformers")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_CMRC_CJK = re.compile(r"[\u4e00-\u9fa5]")  # the range CMRC2018 and MindFormers split into characters
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ASCII_PUNCT = frozenset(string.punctuation)
# CMRC2018's sp_char list. Its "……" entry is two characters, so (compared char by char) it never matches.
CMRC_PUNCT = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
                        "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
                        "「", "」", "（", "）", "－", "～", "『", "』"])
# Word tokens of a non-CJK run (stand-in for nltk.word_tokenize): numbers with inner . or , / words / other.
_WORD_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]")
# jieba.cut on non-Chinese text: blocks of jieba's "han" characters are cut by its HMM fallback into
# alphanumeric runs (with an optional ".digits" and "%") and the pieces between them; every other character
# is its own token, white space included.
_JIEBA_BLOCK = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+)")
_JIEBA_DICT_WORD = re.compile(r"(c\+\+|c#)")  # jieba's dictionary words made of such characters, lower-cased
_JIEBA_ALNUM = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def first_line(text: str) -> str:
    """The first line of a generation after stripping it (MindFormers' EmF1Metric and the reading task)."""
    return text.strip().split("\n")[0]


# --- official (SQuAD v1.1) -----------------------------------------------------------------------

def normalize_official(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def em_f1_official(pred: str, gold: str) -> tuple[float, float]:
    p, g = normalize_official(pred), normalize_official(gold)
    em = float(p == g)
    pt, gt = p.split(), g.split()
    common = sum((Counter(pt) & Counter(gt)).values())
    if common == 0:
        return em, 0.0
    prec, rec = common / len(pt), common / len(gt)
    return em, 2 * prec * rec / (prec + rec)


# --- cmrc (CMRC2018) and mindformers (EmF1Metric) --------------------------------------------------

def _word_tokens(run: str) -> list[str]:
    return _WORD_TOKEN.findall(run)


def jieba_like_tokens(run: str) -> list[str]:
    """What jieba.cut (default mode, HMM on) yields for text without Chinese characters."""
    out: list[str] = []
    for block in _JIEBA_BLOCK.split(run):
        if not block:
            continue
        if _JIEBA_BLOCK.fullmatch(block):
            for piece in _JIEBA_DICT_WORD.split(block):
                if _JIEBA_DICT_WORD.fullmatch(piece):
                    out.append(piece)
                elif len(piece) == 1:
                    out.append(piece)
                else:
                    out.extend(p for p in _JIEBA_ALNUM.split(piece) if p)
        else:
            for piece in re.split(r"(\r\n|\s)", block):
                if re.fullmatch(r"\r\n|\s", piece):
                    out.append(piece)
                else:
                    out.extend(piece)
    return out


def _mixed_segmentation(s: str, cut) -> list[str]:
    """CMRC2018's mixed_segmentation(rm_punc=True): CJK characters alone, other runs through `cut`."""
    out: list[str] = []
    run = ""
    for ch in s.lower().strip():
        if ch in CMRC_PUNCT:
            continue
        if _CMRC_CJK.match(ch):
            if run:
                out.extend(cut(run))
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.extend(cut(run))
    return out


def tokens_cmrc(s: str) -> list[str]:
    """CMRC2018 tokens: CJK characters one by one, other runs word-tokenised, the punctuation set dropped."""
    return _mixed_segmentation(s, _word_tokens)


def tokens_mindformers(s: str) -> list[str]:
    """MindFormers EmF1Metric tokens: as CMRC2018 but runs cut as jieba does (white space kept as tokens)."""
    return _mixed_segmentation(s, jieba_like_tokens)


def remove_punctuation_cmrc(s: str) -> str:
    """CMRC2018's remove_punctuation: lower-case, strip, delete the CMRC2018 punctuation set."""
    return "".join(ch for ch in s.lower().strip() if ch not in CMRC_PUNCT)


def _lcs_len(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous run of tokens (CMRC2018's find_lcs)."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _lcs_em_f1(pred: str, gold: str, tokens) -> tuple[float, float]:
    em = float(remove_punctuation_cmrc(pred) == remove_punctuation_cmrc(gold))
    pt, gt = tokens(pred), tokens(gold)
    lcs = _lcs_len(gt, pt)
    if lcs == 0:
        return em, 0.0
    prec, rec = lcs / len(pt), lcs / len(gt)
    return em, 2 * prec * rec / (prec + rec)


def em_f1_cmrc(pred: str, gold: str) -> tuple[float, float]:
    return _lcs_em_f1(pred, gold, tokens_cmrc)


def em_f1_mindformers(pred: str, gold: str) -> tuple[float, float]:
    return _lcs_em_f1(pred, gold, tokens_mindformers)


_MODES = {"official": em_f1_official, "cmrc": em_f1_cmrc, "mindformers": em_f1_mindformers}


def resolve_mode(mode: str, golds: list[str]) -> str:
    """`auto` -> `cmrc` when any gold holds CJK, else `official`; other modes are checked and returned."""
    if mode == "auto":
        return "cmrc" if any(has_cjk(g) for g in golds) else "official"
    if mode not in _MODES:
        raise TunelabError(f"unknown QA scorer '{mode}' (choose from auto, {', '.join(SCORERS)})",
                           field="scorer")
    return mode


def em_f1(pred: str, golds: list[str] | str, mode: str = "auto") -> tuple[float, float]:
    """Max EM and max F1 over the gold answers; `auto` decides per gold answer."""
    golds = [golds] if isinstance(golds, str) else golds
    best_em = best_f1 = 0.0
    for gold in golds:
        em, f1 = _MODES[resolve_mode(mode, [gold])](pred, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1
