"""Extractive-QA metrics: SQuAD v1.1 (official) and Chinese-aware (CMRC2018) exact match and F1.

`official`: lower-case, strip punctuation and English articles, collapse white space; EM and bag-of-tokens F1.
`cmrc`: every CJK character is its own token, English words stay whole, CMRC2018's punctuation set is
removed, and F1 comes from the longest common substring. `auto` picks `cmrc` when the gold text holds CJK.
Scores are 0-1 per item; callers report them ×100 as SQuAD does.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
CMRC_PUNCT = set("-:_*^/\\~`+=,.!?;'\"()[]{}<>，。：？！“”；’《》……·、「」（）－～『』 \t\n\r")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def normalize_official(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def tokens_cmrc(s: str) -> list[str]:
    """CJK characters one by one; runs of other non-space characters as words; punctuation dropped."""
    out, word = [], ""
    for ch in s.lower():
        if _CJK.match(ch) or ch in CMRC_PUNCT:
            if word:
                out.append(word)
                word = ""
            if ch not in CMRC_PUNCT:
                out.append(ch)
        else:
            word += ch
    if word:
        out.append(word)
    return out


def _lcs_len(a: list[str], b: list[str]) -> int:
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


def em_f1_official(pred: str, gold: str) -> tuple[float, float]:
    p, g = normalize_official(pred), normalize_official(gold)
    em = float(p == g)
    pt, gt = p.split(), g.split()
    common = sum((Counter(pt) & Counter(gt)).values())
    if common == 0:
        return em, 0.0
    prec, rec = common / len(pt), common / len(gt)
    return em, 2 * prec * rec / (prec + rec)


def em_f1_cmrc(pred: str, gold: str) -> tuple[float, float]:
    pt, gt = tokens_cmrc(pred), tokens_cmrc(gold)
    em = float(pt == gt)
    lcs = _lcs_len(pt, gt)
    if lcs == 0:
        return em, 0.0
    prec, rec = lcs / len(pt), lcs / len(gt)
    return em, 2 * prec * rec / (prec + rec)


def em_f1(pred: str, golds: list[str] | str, mode: str = "auto") -> tuple[float, float]:
    """Max EM and max F1 over the gold answers."""
    golds = [golds] if isinstance(golds, str) else golds
    best_em = best_f1 = 0.0
    for gold in golds:
        m = mode if mode != "auto" else ("cmrc" if has_cjk(gold) else "official")
        em, f1 = (em_f1_cmrc if m == "cmrc" else em_f1_official)(pred, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1
