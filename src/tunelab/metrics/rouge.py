"""Rouge-L F between predictions and references, with the segmentation chosen for the language.

rouge-score's default tokenizer keeps only [a-z0-9] and so scores Chinese text as 0; here the text is
segmented first and the segmentation used is recorded with every result:

* `char`: every CJK character is a token; other runs give lower-cased words (letters and digits), so on
  English text `char` equals `word`. Punctuation and white space are not tokens.
* `jieba`: jieba.lcut words, lower-cased, punctuation and white space dropped (needs `pip install jieba`).
* `word`: lower-cased runs of letters and digits — rouge-score's own tokenizer on ASCII text (no stemming).
* `auto`: `char` when the pair holds CJK text, else `word`.

Rouge-L is the LCS (longest common subsequence) of the two token lists: P = LCS / len(prediction),
R = LCS / len(reference), F = 2PR / (P + R); 0 when either side has no tokens. Several references: the
best F. Computed by the maintained `rouge-score` package (`RougeScorer(["rougeL"], tokenizer=...)` with
the tokenizer above) when it is installed, else by the same LCS here; results say which (`backend`).
Per-pair values are 0–1; `summarize_rouge` reports their means ×100 (rougeL_f, rougeL_p, rougeL_r).

The metric only; the tasks scored with it are `tunelab.tasks.rougel` and `tunelab.tasks.continuation`.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.errors import TunelabError

SEGMENTATIONS = ("auto", "char", "jieba", "word")
_CJK_CLASS = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]"
_CJK = re.compile(_CJK_CLASS)
_CHAR_TOKEN = re.compile(rf"{_CJK_CLASS}|(?:(?!{_CJK_CLASS})[^\W_])+")  # a CJK char, or a run of other letters/digits
_WORD_TOKEN = re.compile(r"[^\W_]+")

_backend: Any = None  # rouge_score.rouge_scorer module, False when not installed, None before the first look
_scorers: dict[str, Any] = {}


def resolve_segmentation(segmentation: str, *texts: str) -> str:
    if segmentation not in SEGMENTATIONS:
        raise TunelabError(f"unknown segmentation '{segmentation}' (choose from {', '.join(SEGMENTATIONS)})",
                           field="segmentation")
    if segmentation == "auto":
        return "char" if any(_CJK.search(t) for t in texts) else "word"
    return segmentation


def _jieba():
    try:
        import jieba
    except ImportError as err:
        raise TunelabError("segmentation 'jieba' needs the jieba package: pip install jieba",
                           field="segmentation") from err
    jieba.setLogLevel(60)  # no "Building prefix dict" chatter
    return jieba


def tokenize(text: str, segmentation: str) -> list[str]:
    """Tokens of `text` under a concrete segmentation (char, jieba or word)."""
    text = text.lower()
    if segmentation == "char":
        return _CHAR_TOKEN.findall(text)
    if segmentation == "word":
        return _WORD_TOKEN.findall(text)
    if segmentation == "jieba":
        return [t for t in _jieba().lcut(text) if _WORD_TOKEN.search(t)]
    raise TunelabError(f"unknown segmentation '{segmentation}'", field="segmentation")


class _Tokenizer:
    """rouge-score's tokenizer hook: an object with tokenize(text)."""

    def __init__(self, segmentation: str):
        self.segmentation = segmentation

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.segmentation)


def backend() -> str:
    """'rouge-score' when the package is importable, else 'builtin'."""
    global _backend
    if _backend is None:
        try:
            from rouge_score import rouge_scorer
            _backend = rouge_scorer
        except ImportError:
            _backend = False
    return "rouge-score" if _backend else "builtin"


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _score(prediction: str, reference: str, segmentation: str) -> tuple[float, float, float]:
    if backend() == "rouge-score":
        if segmentation not in _scorers:
            _scorers[segmentation] = _backend.RougeScorer(["rougeL"], tokenizer=_Tokenizer(segmentation))
        s = _scorers[segmentation].score(reference, prediction)["rougeL"]
        return s.precision, s.recall, s.fmeasure
    pt, rt = tokenize(prediction, segmentation), tokenize(reference, segmentation)
    lcs = _lcs(rt, pt) if pt and rt else 0
    if lcs == 0:
        return 0.0, 0.0, 0.0
    p, r = lcs / len(pt), lcs / len(rt)
    return p, r, 2 * p * r / (p + r)


def rouge_l(prediction: str, reference: str | list[str], segmentation: str = "auto") -> dict[str, Any]:
    """Rouge-L of one prediction: {precision, recall, fmeasure (0–1), segmentation} (best reference)."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise TunelabError("no reference to score against", field="reference")
    best = None
    for ref in refs:
        seg = resolve_segmentation(segmentation, prediction, ref)
        p, r, f = _score(prediction, ref, seg)
        if best is None or f > best["fmeasure"]:
            best = {"precision": p, "recall": r, "fmeasure": f, "segmentation": seg}
    return best


def summarize_rouge(scores: list[dict[str, Any]], segmentation: str = "auto") -> dict[str, Any]:
    """Mean Rouge-L ×100 over `rouge_l` results; `segmentation` in the result is the one used, or e.g.
    'auto (char 3, word 2)' when auto chose differently for different pairs."""
    n = len(scores)

    def mean(key: str) -> float:
        return 100 * sum(s[key] for s in scores) / n if n else 0.0

    used: dict[str, int] = {}
    for s in scores:
        used[s["segmentation"]] = used.get(s["segmentation"], 0) + 1
    if len(used) == 1:
        label = next(iter(used))
    elif not used:
        label = segmentation
    else:
        label = f"{segmentation} (" + ", ".join(f"{k} {v}" for k, v in sorted(used.items())) + ")"
    return {"n": n, "rougeL_f": mean("fmeasure"), "rougeL_p": mean("precision"), "rougeL_r": mean("recall"),
            "segmentation": label, "backend": backend()}
