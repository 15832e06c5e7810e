"""Degeneration: how much of an answer repeats itself, the loop a tuned small chat model falls into ("Thank you for
the scarf. Thank you for the scarf. Thank you…") where its base wrote a letter.

`repeated_share` is the share of an answer's word n-grams that occur in it more than once. The words are
`instruction_checks.split_words`' (a Han character is a word, so Chinese is read in character n-grams), lower-cased,
every number one word (so "1. Ava 2. Ava 3. Ava…" loops as "Ava Ava Ava" does), and each symbol (an emoji, `+`, `=`:
"🌟🌟🌟…" loops too); punctuation and spacing are not words, so "thank you, thank you" repeats as "thank you thank
you" does. Every
position of an n-gram seen twice counts, so a sentence said twice gives about 1.0 and prose about 0. An answer of
fewer than `N + 1` words has no n-gram to repeat and gives 0.

`N` and `MAX_REPEATED_SHARE` were set on the greedy answers of SmolLM2-135M-Instruct (Q4_1) and of its LoRA-tuned
arithmetic model (`smollm2-math`) to the forms task's 52 prompts within 320 new tokens. Answers that read as prose (a
letter, a list with a line on each item, an explanation) repeat under 0.2 of their 4-grams, hand-written English and
Chinese prose under 0.1; answers grown repetitive without looping (list items sharing one sentence, an explanation
saying one clause four times) 0.3 to 0.49; answers looping on a sentence, a line, a list item or an emoji 0.55 to 1.0.
An answer passes at `MAX_REPEATED_SHARE` or less: more than half of it said twice is a loop.

`before_loop` is what a loop leaves worth keeping: the answer's longest start, ending at a line, sentence or clause
end, that still reads as prose (`PROSE_SHARE`). Self-replay trains on the base's answers (`data.replay`), and 216 of
SmolLM2's 352 replayed answers loop: replayed whole, they teach the tuned model to go on repeating itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from tunelab.metrics.instruction_checks import split_words

N = 4
MAX_REPEATED_SHARE = 0.5
PROSE_SHARE = 0.2
_CLAUSE_END = re.compile(r"[\n.!?。！？，,;；:：]")


def loop_words(text: str) -> list[str]:
    """`split_words`' words, lower-cased, every number one word `#`, each symbol (an emoji, a math sign) a word."""
    words = []
    for piece in re.split(r"([^\w\s])", text):
        if len(piece) == 1 and unicodedata.category(piece).startswith("S"):
            words.append(piece)
        else:
            words.extend("#" if w.isdigit() else w.lower() for w in split_words(piece))
    return words


def repeated_share(text: str, n: int = N) -> float:
    """The share (0-1) of the n-grams of `text`'s words that occur in it more than once."""
    words = loop_words(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def before_loop(text: str) -> str:
    """`text` itself when it does not loop (`MAX_REPEATED_SHARE` or less); else its longest start ending at a line,
    sentence or clause end whose repeated share reads as prose (`PROSE_SHARE` or less), less the clauses at its end
    said before in it (after a long start a loop's first repeats still read as prose); "" when no start does."""
    if repeated_share(text) <= MAX_REPEATED_SHARE:
        return text
    ends = [m.end() for m in _CLAUSE_END.finditer(text)]
    prose = [e for e in ends if repeated_share(text[:e]) <= PROSE_SHARE]
    if not prose:
        return ""
    bounds = [0] + [e for e in ends if e <= prose[-1]]
    clauses = [tuple(loop_words(text[a:b])) for a, b in zip(bounds, bounds[1:])]
    n = len(clauses)
    while n > 1 and (not clauses[n - 1] or clauses[n - 1] in clauses[:n - 1]):
        n -= 1
    return text[:bounds[n]]
