"""The forms a request asks for, read from its words: "list three …" / "name 5 …" / "列出五个…" / "三种…" asks for that
many items, "write a letter / note / email" / "写一封信 / 感谢信 / 便条 / 邮件" for a letter, "in one sentence" / "用一句话"
for so many sentences, "at least 50 words" / "不少于50字" for so many words.

A user's prompt file for the forms task may leave a prompt's checks out; these are then its checks (the shipped file
states its own, and a test holds that this reading agrees with every one). Counts are digits, English number words
(one to twenty) or Chinese numerals (一 to 九十九, 两, 百). A request for "a few" or "some" items names no count and
asks for no list check.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.metrics.instruction_checks import HAN

ENGLISH_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}
_CHINESE_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_EN_NUMBER = r"(\d{1,3}|" + "|".join(ENGLISH_NUMBERS) + r")"
_ZH_NUMBER = r"(\d{1,3}|[零一二两三四五六七八九十百]{1,4})"


def chinese_number(text: str) -> int | None:
    """一 … 九十九, 两, 一百 … 九百九十九 (and a bare 十 / 百) as a number; None when `text` is not one."""
    if not text or any(c not in _CHINESE_DIGITS and c not in "十百" for c in text):
        return None
    total, digit = 0, None
    for char in text:
        if char == "零":  # 三百零五: a place left empty
            if digit is not None:
                return None
        elif char in _CHINESE_DIGITS:
            if digit is not None:
                return None  # 三四: two digits in a row is no numeral
            digit = _CHINESE_DIGITS[char]
        else:
            total += (1 if digit is None else digit) * (10 if char == "十" else 100)
            digit = None
    return total + (digit or 0)


def _number(text: str) -> int | None:
    text = text.lower()
    if text.isdigit():
        return int(text)
    return ENGLISH_NUMBERS[text] if text in ENGLISH_NUMBERS else chinese_number(text)


_LIST_EN = re.compile(rf"\b(?:list|name|give(?: me)?|suggest|recommend|mention|write down|tell me|what are)\s+"
                      rf"(?:me\s+)?(?:the\s+)?(?:top\s+)?{_EN_NUMBER}\b"
                      r"(?!\s+(?:sentences?|words?|paragraphs?|lines?)\b)", re.IGNORECASE)
_LIST_ZH = re.compile(rf"(?:列出|列举|说出|说说|写出|举出|给出|推荐|提供|想|起|取|介绍|有哪|^请?){_ZH_NUMBER}"
                      rf"(?:个|种|样|本|条|件|只|位|首|部|道|家|项|类|座|款|处|点)")
_LETTER_EN = re.compile(r"\bwrite\b.*\b(?:letter|note|e-?mail|card)\b", re.IGNORECASE)
_LETTER_ZH = re.compile(r"写.*(?:(?<![短微相自诚通音])信(?![息心用任号])|便条|留言条|邮件|贺卡)")
_SENTENCES_EN = [
    (re.compile(rf"\bat least {_EN_NUMBER} sentences?\b", re.IGNORECASE), "at least", 0),
    (re.compile(rf"\b(?:no more than|at most|not more than|up to) {_EN_NUMBER} sentences?\b", re.IGNORECASE),
     "at most", 0),
    (re.compile(rf"\b(?:fewer|less) than {_EN_NUMBER} sentences?\b", re.IGNORECASE), "at most", -1),
    (re.compile(rf"\b(?:in|using|use|with|write|give me|give) (?:exactly |just |only )?{_EN_NUMBER} sentences?\b",
                re.IGNORECASE), "exactly", 0),
]
_WORDS_EN = [
    (re.compile(rf"\bat least {_EN_NUMBER} words\b", re.IGNORECASE), "at least", 0),
    (re.compile(rf"\b(?:no more than|at most|not more than|up to|within) {_EN_NUMBER} words\b", re.IGNORECASE),
     "at most", 0),
    (re.compile(rf"\b(?:fewer|less) than {_EN_NUMBER} words\b", re.IGNORECASE), "at most", -1),
]
_SENTENCES_ZH = [
    (re.compile(rf"(?:不少于|至少){_ZH_NUMBER}句"), "at least", 0),
    (re.compile(rf"(?:不超过|不多于|最多|至多){_ZH_NUMBER}句"), "at most", 0),
    (re.compile(rf"少于{_ZH_NUMBER}句"), "at most", -1),
    (re.compile(rf"{_ZH_NUMBER}句话?(?:以内|之内)"), "at most", 0),
    (re.compile(rf"(?:用|写|以){_ZH_NUMBER}句话?"), "exactly", 0),
]
_WORDS_ZH = [
    (re.compile(rf"(?:不少于|至少|不低于){_ZH_NUMBER}个?字"), "at least", 0),
    (re.compile(rf"{_ZH_NUMBER}个?字以上"), "at least", 0),
    (re.compile(rf"(?:不超过|不多于|最多|至多){_ZH_NUMBER}个?字"), "at most", 0),
    (re.compile(rf"少于{_ZH_NUMBER}个?字"), "at most", -1),
    (re.compile(rf"{_ZH_NUMBER}个?字(?:以内|之内)"), "at most", 0),
]


def _first_length(prompt: str, rules) -> dict[str, Any] | None:
    for pattern, relation, shift in rules:
        m = pattern.search(prompt)
        if m and (count := _number(m.group(1))) is not None and count + shift >= 1:
            return {"count": count + shift, "relation": relation}
    return None


def requested_checks(prompt: str) -> list[dict[str, Any]]:
    """The form checks `prompt` asks for, as `{"kind", "args"}` specs (`tunelab.metrics.form_checks`), in the order
    list, letter, sentences, words; none when it asks for no form (its language and repetition are still judged)."""
    chinese = bool(re.search(f"[{HAN}]", prompt))
    checks: list[dict[str, Any]] = []
    sentences = _first_length(prompt, _SENTENCES_ZH if chinese else _SENTENCES_EN)
    words = _first_length(prompt, _WORDS_ZH if chinese else _WORDS_EN)
    listing = (_LIST_ZH if chinese else _LIST_EN).search(prompt)
    if listing and (count := _number(listing.group(1))):
        checks.append({"kind": "list_items", "args": {"count": count}})
    if (_LETTER_ZH if chinese else _LETTER_EN).search(prompt):
        checks.append({"kind": "letter", "args": {}})
    if sentences:
        checks.append({"kind": "sentences", "args": sentences})
    if words:
        checks.append({"kind": "words", "args": words})
    return checks
