"""Sentence boundaries for packing whole sentences into blocks (and for taking an article's first sentence).

`split_sentences` only cuts, never changes: `"".join(split_sentences(t)) == t` for every string, and no
piece is empty. A sentence ends

- after a run of 。｡！？!?；;… (so "……", "！？", "?!" stay whole), with the closing quotes and brackets
  that follow (。」 。” ！） ?" ）。」);
- after an English period (or "...") that is followed by whitespace and then an uppercase letter, a digit,
  a CJK character or an opening quote/bracket: "Hello. World" splits, "3.14", "e.g. this" and "a.b" do not
  ("Dr. Smith" does: abbreviations are not recognised);
- at a newline.

Whitespace (spaces, newlines) after the end stays with the sentence it follows, so the next sentence starts
with a visible character. One compiled regex finds every end; the text is sliced between them.
"""

from __future__ import annotations

import re

TERMINATORS = "。｡！？!?；;…"
CLOSERS = "”’\"'）)」』》】〉〕］]}›»"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\u3040-\u30ff\uac00-\ud7af"
_NEXT_START = f"A-Z0-9{_CJK}“‘\"'（(「『《【\\["
_T, _C = re.escape(TERMINATORS), re.escape(CLOSERS)
# Every end starts with one of 。！？….\n; the branch is chosen by looking back at it. Starting with a plain
# character set lets the regex engine skip ahead to candidates (3-4x faster than the readable form
# "[T]+[C]*...|\.+[C]*\s+(?=...)|\n\s*", which tests/test_corpus_text.py checks it against). A run of
# dots is tried from its first dot only: a failed run fails from every dot in it, and trying each would be
# quadratic on "....." thousands long.
_END = re.compile(
    f"[{_T}.\n](?:(?<=[{_T}])[{_T}{_C}]*\\s*|(?<=\n)\\s*|(?<=\\.)(?<!\\.\\.)\\.*[{_C}]*\\s+(?=[{_NEXT_START}]))"
)
_SOFT = re.compile("(?:[，、：]|[,:](?![0-9]))+\\s*")  # not inside 1,000 or 12:30
_SPACE = re.compile("\\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace included, so that joining them gives `text` back exactly."""
    pieces = []
    start = 0
    for m in _END.finditer(text):
        end = m.end()
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def count_sentences(text: str) -> int:
    """`len(split_sentences(text))`, with no slicing: a newline added at the end either joins the last end's
    trailing whitespace or, after text that ends no sentence, is one more end."""
    return len(_END.findall(text + "\n")) if text else 0


def soft_split_points(sentence: str) -> list[int]:
    """Offsets where a sentence too long for a block may be cut, best first.

    First the points after a comma, colon or enumeration mark (，、,：: with the whitespace after them; not
    an ASCII one before a digit, as in 1,000 and 12:30), then those after a run of whitespace; within each
    kind from the last to the first. So the first offset in the list that fits the space left is the best
    cut. 0 and len(sentence) are never returned.
    """
    punct, spaces = soft_split_kinds(sentence)
    return punct[::-1] + spaces[::-1]


def soft_split_kinds(sentence: str) -> tuple[list[int], list[int]]:
    """`soft_split_points` as its two kinds, each in ascending order: (after punctuation, after whitespace)."""
    n = len(sentence)
    punct = [m.end() for m in _SOFT.finditer(sentence) if m.end() < n]
    taken = set(punct)
    spaces = [m.end() for m in _SPACE.finditer(sentence) if 0 < m.end() < n and m.end() not in taken]
    return punct, spaces
