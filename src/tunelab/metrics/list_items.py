"""The items of a list in an answer, English or Chinese: what "list three yellow fruits" / "列出三种黄色的水果" is
checked by (`tunelab.metrics.form_checks`), since a tuned chat model can lose the list and name one fruit, or one
fruit three times.

Where the items are, the first that applies:

1. marked lines: lines opened by a number (`1.` `1)` `1、` `(1)` `①` `一、`) or a bullet (`-` `*` `•` `·`), at the
   outermost indentation (sub-points under an item are not items). Numbered lines win over bullets when both exist.
2. plain lines: two or more short lines after a line ending in a colon ("Here are three:\\nBanana\\nLemon").
3. an enumeration in one sentence: the first sentence split by `,` `;` `，` `；` `、` (only `、` when it has one:
   then `，` separates clauses, not items) into two or more items, else the first split by a last "and / or / 和 /
   以及 / 还有 / 或" alone ("Bananas and lemons."). What comes before a colon, a lead-in ("are", "include", "such
   as", "有", "是", "比如"…) in the first item, or an opening "Sure" / "好的" is not an item; neither is a trailing
   clause ("which are all sweet", "它们都很甜").
4. otherwise the answer, if it says anything, names one item.

An item is compared by its head: markdown and punctuation dropped, lower-cased, cut at a description (`:` `：` ` - `
`—` `(` `,` `，` ` is ` ` are ` `是`), an English article or final plural `s` ignored. "Apple, Orange, Orange" is
three items of which two are one: a list that repeats an item fails its count (`distinct_items`).
"""

from __future__ import annotations

import re

from tunelab.metrics.instruction_checks import HAN, count_words, split_sentences

_MARKDOWN = re.compile(r"\*\*|__|`")
_NUMBERED = re.compile(r"^(?P<indent>\s*)(?:\d{1,2}(?:[.)](?!\d)|[、．）])|[(（]\d{1,2}[)）]|[①-⑳]|"
                       r"[一二三四五六七八九十]{1,2}[、．.])\s*(?P<item>\S.*)$")
_BULLET = re.compile(r"^(?P<indent>\s*)[-*•·+]\s+(?P<item>\S.*)$")
_HEADING = re.compile(r"^(\s*)#{1,6}\s*")
_HAN = re.compile(f"[{HAN}]")

# A plain line is an item when it is this short: a name or a noun phrase, not a sentence.
_SHORT_LINE_WORDS = 6
_SHORT_LINE_HAN = 12

_CLAUSE_MARKS = "，,;；:："
_OPENERS = {"sure", "okay", "ok", "of course", "certainly", "yes", "well", "absolutely", "好的", "好", "当然",
            "没问题", "可以", "当然可以", "嗯"}
_LEAD_IN_EN = re.compile(r"^.*?\b(?:are|is|include|includes|including|such as|like|e\.g\.|for example|namely)\s+",
                         re.IGNORECASE)
_LEAD_IN_ZH = re.compile(r"^.*(?:有|是|包括|比如|例如|像是|像|如)")
_LATER_LEAD_IN = re.compile(r"^.*?(?:\b(?:such as|including|like|e\.g\.|for example|namely)\s+|比如|例如|包括|像是)",
                            re.IGNORECASE)
_TRAILING_CLAUSE = re.compile(r"^(?:(?:which|that|who|these|those|they|all|both|each|it|its|and they|and all)\b|"
                              r"它们|这些|这几|以上|都|它)", re.IGNORECASE)
_CONJUNCTION_EN = re.compile(r"\s+(?:and|or|as well as|&)\s+", re.IGNORECASE)
_CONJUNCTION_ZH = re.compile(rf"(?<=[{HAN}》”」』）)])(?:以及|还有|或者|和|及|与|或|跟)(?=[{HAN}《“「『（(])")
_HEAD_CUT = re.compile(r"\s*(?::|：|\s[-–—]\s|—|\(|（|,|，|;|；|。|\.(?:\s|$)|!|！|\s(?:is|are|was|were)\s|(?<=[^\W\d_])是)")
_ARTICLE = re.compile(r"^(?:a|an|the|and|or)\s+", re.IGNORECASE)


def _clean(line: str) -> str:
    """A line without markdown emphasis and heading marks, which wrap items ("**1. Banana**", "### 1. Banana")."""
    return _HEADING.sub(r"\1", _MARKDOWN.sub("", line)).rstrip()


def _marked_items(lines: list[str]) -> list[str]:
    """The items of numbered lines (else bulleted ones) at the outermost indentation among them."""
    for pattern in (_NUMBERED, _BULLET):
        found = [m for m in (pattern.match(line) for line in lines) if m]
        if len(found) >= 2:
            outer = min(len(m.group("indent").expandtabs(4)) for m in found)
            return [m.group("item") for m in found if len(m.group("indent").expandtabs(4)) == outer]
    return []


def _is_short(line: str) -> bool:
    han = len(_HAN.findall(line))
    return bool(line.strip()) and count_words(line) - han <= _SHORT_LINE_WORDS and han <= _SHORT_LINE_HAN and not (
        re.search(r"[.!?。！？]\s*\S", line))


def _plain_line_items(lines: list[str]) -> list[str]:
    """Two or more short lines in a row right after a line ending in a colon."""
    for i, line in enumerate(lines):
        if line.rstrip().endswith((":", "：")):
            block = []
            for following in lines[i + 1:]:
                if not following.strip():
                    if block:
                        break
                    continue
                if not _is_short(following):
                    break
                block.append(following.strip())
            if len(block) >= 2:
                return block
    return []


def _after_lead_in(piece: str) -> str:
    """A first item without what introduces the list: a lead-in word ("are", "such as", "有", "比如")."""
    return _LEAD_IN_ZH.sub("", piece) if _HAN.search(piece) else _LEAD_IN_EN.sub("", piece)


def _sentence_items(sentence: str, by_conjunction: bool) -> list[str]:
    """The items one sentence enumerates; `by_conjunction`: split by its last and / 和 alone (no separators)."""
    enumerated = "、" in sentence
    if by_conjunction:
        pieces = [sentence]
    else:
        pieces = re.split("[、]" if enumerated else "[,;，；]", sentence)
        if len(pieces) < 2:
            return []
    items: list[str] = []
    for i, piece in enumerate(pieces):
        if i == 0:  # a clause before the first item: "好的，水果有香蕉" / "Here they are: bananas"
            piece = _after_lead_in(re.split(f"[{_CLAUSE_MARKS}]", piece)[-1])
        else:
            if enumerated:  # "…、菠萝，它们都很甜": the clause after the last item
                piece = re.split(f"[{_CLAUSE_MARKS}]", piece)[0]
            reset = _LATER_LEAD_IN.match(piece)
            if reset:  # "…, such as bananas": the items start here
                items, piece = [], piece[reset.end():]
            elif _TRAILING_CLAUSE.match(piece.strip()):
                break
        items.append(piece)
    if items and _head(items[0]) in _OPENERS:
        items = items[1:]
    if items:  # "…, lemons and pineapples": the last piece holds two
        last = items[-1]
        items = items[:-1] + re.split(_CONJUNCTION_ZH if _HAN.search(last) else _CONJUNCTION_EN, last)
    items = [item for item in items if _head(item)]
    return items if len(items) >= 2 else []


def _enumerated_items(text: str) -> list[str]:
    """The items of the first sentence that enumerates with separators, else of the first joined by and / 和."""
    sentences = [s for line in text.split("\n") for s in split_sentences(line)]
    for by_conjunction in (False, True):
        for sentence in sentences:
            sentence = re.sub(r"[.!?。！？]+[\"'”’)）」』]*$", "", sentence)
            items = _sentence_items(sentence, by_conjunction)
            if items:
                return items
    return []


def list_items(answer: str) -> list[str]:
    """The items the answer lists, as written (see the module docstring for where they are looked for)."""
    lines = [_clean(line) for line in answer.split("\n")]
    for find in (_marked_items, _plain_line_items):
        items = find(lines)
        if items:
            return items
    text = "\n".join(lines)
    items = _enumerated_items(text)
    if items:
        return items
    return [text.strip()] if re.search(r"[^\W_]", text) else []


def _singular(head: str) -> str:
    """An English head's last word without a plural ending (berries: berry, tomatoes: tomato, apples: apple)."""
    if not re.search(r"[a-z]{3}s$", head) or head.endswith("ss"):
        return head
    if head.endswith("ies"):
        return head[:-3] + "y"
    if re.search(r"(?:oes|ches|shes|xes|sses)$", head):
        return head[:-2]
    return head[:-1]


def _head(item: str) -> str:
    """What an item is compared by: its name, without its description, markup, article or plural ending."""
    head = _HEAD_CUT.split(_MARKDOWN.sub("", item).strip(), maxsplit=1)[0]
    head = " ".join(re.sub(r"[^\w\s'-]", " ", head).lower().split())
    return _singular(_ARTICLE.sub("", head))


def item_heads(items: list[str]) -> list[str]:
    """Each item's head (`_head`): two items with one head are one item named twice."""
    return [_head(item) for item in items]
