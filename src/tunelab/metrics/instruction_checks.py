"""Verifiable instructions: a registry of instruction kinds, each checked on a response by a program, no judge model.

The instruments of IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models"). Read
from google-research/google-research, `instruction_following_eval/` (`instructions.py` @ 3f357bd,
`instructions_registry.py` @ 1d49f2c, `instructions_util.py` @ 5b09c22, `evaluation_lib.py` @ 4c42994). Every one of
IFEval's 25 registered kinds is here under IFEval's id with IFEval's keyword arguments, so IFEval's own input files
load; four are tunelab's own (`origin="tunelab"`): `detectable_format:numbered_list`, `detectable_format:json_keys`,
`detectable_format:number_headings` and `startend:start_checker`.

A kind's check is IFEval's `check_following` except where IFEval's cannot read Chinese or needs a download:

* words (`count_words`): IFEval counts runs of `\\w` (NLTK's `RegexpTokenizer(r"\\w+")`), which makes a whole
  Chinese clause one word. Here every Han character is a word and every run of other word characters (letters,
  digits, `_`) is a word: on text without Han characters the count is IFEval's.
* sentences (`split_sentences`): IFEval uses NLTK's punkt English model (a download). Here a sentence ends at a run
  of `. ! ? 。 ！ ？` (closing quotes and brackets after it belong to it); a `.` is no end inside a word or number
  (`3.14`, `example.com`, `e.g`), after a lone letter (`J. K.`, `e.g.`), after `Mr Mrs Ms Dr Prof St Jr Sr vs`, or
  as a list marker at the start of a line (`1.`). Line breaks end nothing. A piece counts when it holds a letter or
  digit. It agrees with punkt on ordinary prose; rare abbreviations differ.
* language (`language:response_language`, and the "English" of `change_case:english_*`): IFEval runs langdetect.
  Here the script decides: the response's letters are counted in units (a Han, kana or Thai character is one, a run
  of letters of any other script is one) and the language's script must hold more than half of them: Latin for
  `en`, Han without kana for `zh`, kana (with Han) for `ja`, Hangul for `ko`, and the one script of `th he bn pa gu
  ta te kn ml`. Languages that share a script with others (`fr de es…` Latin, `ru uk bg` Cyrillic, `ar fa ur`
  Arabic, `hi mr ne` Devanagari) cannot be told apart without a detector and are an argument error; so `en` means
  "written in Latin letters" (English cannot be told from French), which separates the English and Chinese answers
  this workbench is about. A response without letters passes, as IFEval passes text langdetect cannot read.
* `punctuation:no_comma` forbids the ASCII comma `,` and also the Chinese full-width comma `，`, the enumeration
  comma `、` (顿号) and their small / half-width forms `﹐﹑､`: "no commas" in Chinese covers both marks a writer
  pauses with, and swapping `，` for `、` would otherwise keep every pause and pass.
* `keywords:forbidden_words`: IFEval requires `\\b` at the word's edges, which never holds between two Han
  characters (both are `\\w`), so a Chinese word inside a Chinese sentence would never be found. Here an edge that is
  a Han character needs no boundary, and a letter/digit edge needs no neighbouring letter/digit other than Han.
  Without Han characters this is IFEval's `\\b`.
* `startend:quotation` also accepts a response wrapped in Chinese double quotes `“…”`.
* `length_constraints:nth_paragraph_first_word` with a Han `first_word`: the paragraph starts with it (Chinese has no
  spaces to find a first word by); otherwise IFEval's first-word rule.
* `change_case:capital_word_frequency`: NLTK's `word_tokenize` is replaced by the word rule above with hyphenated
  words kept whole (as IFEval's comment says NLTK does).
* keywords, markers and splitters are literal text (IFEval passes them to `re` unescaped: the same for plain words).
* arguments: IFEval draws a random value for a missing one (it also writes prompts); here a missing, unknown or bad
  argument, or an unknown kind, is a `TunelabError` naming the field.

Strict and loose checking are IFEval's `evaluation_lib.test_instruction_following_{strict,loose}`: strict checks the
response (an all-white-space response follows nothing); loose passes when any of eight variants passes — the
response, without its first line, without its last line, without both, and each of those with every `*` removed.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

# CJK ideographs: the unified block, extension A, compatibility ideographs, and the supplementary-plane extensions
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN = re.compile(f"[{HAN}]")
_WORD = re.compile(rf"[{HAN}]|[^\W{HAN}]+")
_HYPHENATED_WORD = re.compile(rf"[{HAN}]|[^\W{HAN}]+(?:-[^\W{HAN}]+)*")

RELATIONS = ("less than", "at least")


def split_words(text: str) -> list[str]:
    """The words `count_words` counts, in order: each Han character, and each run of other word characters."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    """Words as IFEval counts them (runs of word characters), with each Han character a word of its own."""
    return len(split_words(text))


# --- sentences -----------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)）」』\]]*")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs"}
_LAST_WORD = re.compile(r"\w+$")
_LIST_MARKER = re.compile(r"(?:^|\n)[^\S\n]*\d{1,3}$")
_LOOK_BACK = 16  # characters before a `.` that decide it: enough for an abbreviation or a list marker's indent


def _ends_sentence(text: str, end: re.Match) -> bool:
    """Whether a run of terminators ends a sentence; only a lone ASCII `.` can be something else. It looks a few
    characters back, never to the start of the text, so a long answer full of dots is split in linear time."""
    if end.group().rstrip("\"'”’)）」』]") != ".":
        return True
    after = text[end.end(): end.end() + 1]
    if after and re.match(r"\w", after) and end.end() - end.start() == 1:
        return False  # 3.14, example.com, e.g
    head = text[max(0, end.start() - _LOOK_BACK): end.start()]
    marker = _LIST_MARKER.search(head)
    if marker and (marker.group().startswith("\n") or end.start() <= _LOOK_BACK):
        return False  # "1." opening a list item
    before = _LAST_WORD.search(head)
    if before is None:
        return True
    word = before.group()
    if len(word) == 1 and word.isalpha() and not _HAN.match(word):
        return False  # an initial: J. K. Rowling, e.g.
    return word.lower() not in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see the module docstring for where one ends)."""
    pieces, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        if _ends_sentence(text, end):
            pieces.append(text[start: end.end()])
            start = end.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if re.search(r"[^\W_]", p)]


def count_sentences(text: str) -> int:
    """What `length_constraints:number_sentences` compares (IFEval's punkt count, by the rules above)."""
    return len(split_sentences(text))


# --- scripts -------------------------------------------------------------------------------------------------------

_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_SCRIPTS = {  # script: its letters; Han, kana and Thai are written without spaces, so each character is a unit
    "han": HAN, "kana": _KANA, "thai": "\u0e00-\u0e7f",
    "latin": "A-Za-z\u00c0-\u024f\u1e00-\u1eff", "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "hebrew": "\u0590-\u05ff", "bengali": "\u0980-\u09ff", "gurmukhi": "\u0a00-\u0a7f", "gujarati": "\u0a80-\u0aff",
    "tamil": "\u0b80-\u0bff", "telugu": "\u0c00-\u0c7f", "kannada": "\u0c80-\u0cff", "malayalam": "\u0d00-\u0d7f",
}
_PER_CHARACTER = ("han", "kana", "thai")
_UNIT = re.compile("|".join(
    [f"(?P<{s}>[{_SCRIPTS[s]}])" for s in _PER_CHARACTER]
    + [f"(?P<{s}>[{chars}]+)" for s, chars in _SCRIPTS.items() if s not in _PER_CHARACTER]
    + [rf"(?P<other>[^\W\d_{''.join(_SCRIPTS.values())}]+)"]))
LANGUAGE_SCRIPTS = {"en": "latin", "zh": "han", "ja": "kana", "ko": "hangul", "th": "thai", "he": "hebrew",
                    "bn": "bengali", "pa": "gurmukhi", "gu": "gujarati", "ta": "tamil", "te": "telugu",
                    "kn": "kannada", "ml": "malayalam"}
_SHARED_SCRIPT = {"es": "Latin", "pt": "Latin", "fr": "Latin", "de": "Latin", "it": "Latin", "pl": "Latin",
                  "vi": "Latin", "sw": "Latin", "fi": "Latin", "ru": "Cyrillic", "uk": "Cyrillic", "bg": "Cyrillic",
                  "ar": "Arabic", "fa": "Arabic", "ur": "Arabic", "hi": "Devanagari", "mr": "Devanagari",
                  "ne": "Devanagari"}


def script_units(text: str) -> Counter:
    """How many units of each script `text` holds (`other` for letters of scripts not listed)."""
    return Counter(m.lastgroup for m in _UNIT.finditer(text))


def script_language(text: str) -> str:
    """The language a prompt given without one is taken to be in: `zh` when Han characters are most of its
    letters, else `en` (the instructions and forms tasks' default)."""
    return "zh" if not is_language(text, "en") and is_language(text, "zh") else "en"


def is_language(text: str, language: str) -> bool:
    """Whether `text` is written in `language`'s script (a code of `LANGUAGE_SCRIPTS`); True without letters."""
    units = script_units(text)
    total = sum(units.values())
    if not total:
        log.debug("no letters to tell the language of %r by: counted as %s", text[:40], language)
        return True
    if language == "zh":
        return units["han"] * 2 > total and not units["kana"]
    if language == "ja":
        return units["kana"] > 0 and (units["kana"] + units["han"]) * 2 > total
    return units[LANGUAGE_SCRIPTS[language]] * 2 > total


# --- arguments -----------------------------------------------------------------------------------------------------

def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {json.dumps(value, ensure_ascii=False)}")
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value}")
    return value


def _relation(value: Any) -> str:
    if value not in RELATIONS:
        raise ValueError(f"expected one of {' / '.join(repr(r) for r in RELATIONS)}, "
                         f"got {json.dumps(value, ensure_ascii=False)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {json.dumps(value, ensure_ascii=False)}")
    return value.strip()


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of strings, got {json.dumps(value, ensure_ascii=False)}")
    return [_text(v) for v in value]


def _letter(value: Any) -> str:
    if not isinstance(value, str) or len(value.strip()) != 1 or not value.strip().isalpha():
        raise ValueError(f"expected a single letter, got {json.dumps(value, ensure_ascii=False)}")
    return value.strip().lower()


def _language(value: Any) -> str:
    known = ", ".join(LANGUAGE_SCRIPTS)
    if value in _SHARED_SCRIPT:
        raise ValueError(f"'{value}' shares the {_SHARED_SCRIPT[value]} script with other languages and cannot be "
                         f"told by script without a language detector (languages told by script: {known})")
    if value not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {json.dumps(value, ensure_ascii=False)} (languages told by script: "
                         f"{known})")
    return value


# --- the registry --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstructionKind:
    """One kind of instruction: its id, its arguments (name: validator returning the normalised value; all required),
    the check (response and normalised arguments -> followed?), and where the kind comes from."""

    id: str
    args: dict[str, Callable[[Any], Any]]
    check: Callable[..., bool]
    origin: str
    description: str


KINDS: dict[str, InstructionKind] = {}


def _kind(kind_id: str, origin: str = "ifeval", **args: Callable[[Any], Any]):
    def register(check: Callable[..., bool]) -> Callable[..., bool]:
        KINDS[kind_id] = InstructionKind(kind_id, args, check, origin, (check.__doc__ or "").strip())
        return check
    return register


def _compare(actual: int, relation: str, threshold: int) -> bool:
    return actual < threshold if relation == "less than" else actual >= threshold


def _literal(text: str) -> re.Pattern:
    return re.compile(re.escape(text), re.IGNORECASE)


@_kind("keywords:existence", keywords=_texts)
def _keywords_existence(response: str, keywords: list[str]) -> bool:
    """Every keyword appears (case-insensitive, anywhere)."""
    return all(_literal(k).search(response) for k in keywords)


@_kind("keywords:frequency", keyword=_text, frequency=_count, relation=_relation)
def _keyword_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword appears `relation` `frequency` times (case-insensitive, non-overlapping)."""
    return _compare(len(_literal(keyword).findall(response)), relation, frequency)


def _edge(char: str, side: str) -> str:
    """What must hold beside a forbidden word's edge character (see the module docstring)."""
    if _HAN.match(char):
        return ""
    if re.match(r"\w", char):
        return rf"(?<![^\W{HAN}])" if side == "before" else rf"(?![^\W{HAN}])"
    return r"\b"


@_kind("keywords:forbidden_words", forbidden_words=_texts)
def _forbidden_words(response: str, forbidden_words: list[str]) -> bool:
    """None of the words appears as a word (case-insensitive)."""
    for word in forbidden_words:
        pattern = _edge(word[0], "before") + re.escape(word) + _edge(word[-1], "after")
        if re.search(pattern, response, re.IGNORECASE):
            return False
    return True


@_kind("keywords:letter_frequency", letter=_letter, let_frequency=_count, let_relation=_relation)
def _letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The letter appears `let_relation` `let_frequency` times (either case)."""
    return _compare(Counter(response.lower())[letter], let_relation, let_frequency)


@_kind("language:response_language", language=_language)
def _response_language(response: str, language: str) -> bool:
    """The whole response is in the language (told by its script)."""
    return is_language(response, language)


@_kind("length_constraints:number_sentences", num_sentences=_count, relation=_relation)
def _number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    """The response has `relation` `num_sentences` sentences."""
    return _compare(count_sentences(response), relation, num_sentences)


@_kind("length_constraints:number_paragraphs", num_paragraphs=_count)
def _number_paragraphs(response: str, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by the markdown divider `***`, none of them empty."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


@_kind("length_constraints:number_words", num_words=_count, relation=_relation)
def _number_words(response: str, num_words: int, relation: str) -> bool:
    """The response has `relation` `num_words` words (a Han character is a word)."""
    return _compare(count_words(response), relation, num_words)


def _first_word(paragraph: str) -> str:
    """IFEval's first word: the first white-space token, leading quotes dropped, cut at punctuation, lower-cased."""
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    return re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()


def _nth_paragraph_valid(args: dict[str, Any]) -> None:
    if args["nth_paragraph"] > args["num_paragraphs"]:
        raise ValueError(f"nth_paragraph {args['nth_paragraph']} is past num_paragraphs {args['num_paragraphs']}")


@_kind("length_constraints:nth_paragraph_first_word", num_paragraphs=_count, nth_paragraph=_count,
       first_word=lambda v: _text(v).lower())
def _nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by a blank line, paragraph `nth_paragraph` starting with
    `first_word`."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    if _HAN.search(first_word):
        starts = paragraph.lstrip("'\"“‘「『").lower().startswith(first_word)
    else:
        starts = _first_word(paragraph) == first_word
    return count == num_paragraphs and starts


@_kind("detectable_content:number_placeholders", num_placeholders=_count)
def _number_placeholders(response: str, num_placeholders: int) -> bool:
    """At least `num_placeholders` placeholders in square brackets, like [address]."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


@_kind("detectable_content:postscript", postscript_marker=_text)
def _postscript(response: str, postscript_marker: str) -> bool:
    """A postscript starting with the marker, anywhere (P.S. and P.P.S tolerate a space after each dot). IFEval's
    findall of white space, marker and rest of line finds something exactly when the marker occurs: searched here."""
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker.lower())
    return re.search(pattern, response.lower()) is not None


@_kind("detectable_format:number_bullet_lists", num_bullets=_count)
def _number_bullet_lists(response: str, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines (starting with `*` or `-`)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@_kind("detectable_format:constrained_response")
def _constrained_response(response: str) -> bool:
    """The response contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    return any(option in response.strip() for option in CONSTRAINED_RESPONSES)


@_kind("detectable_format:number_highlighted_sections", num_highlights=_count)
def _number_highlighted_sections(response: str, num_highlights: int) -> bool:
    """At least `num_highlights` markdown highlights, *like this* or **like this**."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


@_kind("detectable_format:multiple_sections", section_spliter=_text, num_sections=_count)
def _multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections, each opened by the splitter and a number (Section 1, Section 2…)."""
    sections = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(sections) - 1 >= num_sections


def _unfenced(response: str) -> str:
    """The response without a markdown code fence around it (IFEval's json_format accepts one)."""
    return (response.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
            .removeprefix("```").removesuffix("```").strip())


@_kind("detectable_format:json_format")
def _json_format(response: str) -> bool:
    """The whole response is JSON (a markdown code fence around it is allowed)."""
    try:
        json.loads(_unfenced(response))
    except ValueError:
        return False
    return True


@_kind("detectable_format:json_keys", origin="tunelab", keys=_texts)
def _json_keys(response: str, keys: list[str]) -> bool:
    """The whole response is a JSON object (fence allowed) holding every key in `keys` at its top level."""
    try:
        value = json.loads(_unfenced(response))
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


_NUMBERED_ITEM = re.compile(r"^\s*\d{1,3}(?:[.)]\s+|[、．）]\s*)\S", re.MULTILINE)


@_kind("detectable_format:numbered_list", origin="tunelab", num_items=_count)
def _numbered_list(response: str, num_items: int) -> bool:
    """Exactly `num_items` numbered lines: `1. `, `1) `, or the Chinese `1、` / `1．` / `1）`."""
    return len(_NUMBERED_ITEM.findall(response)) == num_items


@_kind("detectable_format:number_headings", origin="tunelab", num_headings=_count)
def _number_headings(response: str, num_headings: int) -> bool:
    """Exactly `num_headings` markdown headings (`#` to `######` and a space at a line's start): the sections."""
    return len(re.findall(r"^ {0,3}#{1,6}[ \t]+\S", response, flags=re.MULTILINE)) == num_headings


@_kind("detectable_format:title")
def _title(response: str) -> bool:
    """A title in double angular brackets, like <<poem of joy>>."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


@_kind("combination:two_responses")
def _two_responses(response: str) -> bool:
    """Two different responses separated by six asterisks `******`."""
    kept = []
    parts = response.split("******")
    for i, part in enumerate(parts):
        if part.strip():
            kept.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0].strip() != kept[1].strip()


@_kind("combination:repeat_prompt", prompt_to_repeat=_text)
def _repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    """The response starts by repeating the request word for word (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.lower())


@_kind("startend:end_checker", end_phrase=_text)
def _end_checker(response: str, end_phrase: str) -> bool:
    """The response ends with the phrase (case-insensitive; a closing `"` may follow)."""
    return response.strip().strip('"').lower().endswith(end_phrase.lower())


@_kind("startend:start_checker", origin="tunelab", start_phrase=_text)
def _start_checker(response: str, start_phrase: str) -> bool:
    """The response starts with the phrase (case-insensitive; an opening `"` may precede it)."""
    return response.strip().strip('"').lower().startswith(start_phrase.lower())


@_kind("startend:quotation")
def _quotation(response: str) -> bool:
    """The whole response is wrapped in double quotation marks, "…" or “…”."""
    value = response.strip()
    return len(value) > 1 and (value[0], value[-1]) in (('"', '"'), ("“", "”"))


@_kind("change_case:capital_word_frequency", capital_frequency=_count, capital_relation=_relation)
def _capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    """Words in capital letters appear `capital_relation` `capital_frequency` times."""
    capitals = sum(1 for w in _HYPHENATED_WORD.findall(response) if w.isupper())
    return _compare(capitals, capital_relation, capital_frequency)


@_kind("change_case:english_capital")
def _english_capital(response: str) -> bool:
    """The whole response is English in capital letters."""
    return response.isupper() and is_language(response, "en")


@_kind("change_case:english_lowercase")
def _english_lowercase(response: str) -> bool:
    """The whole response is English in lowercase letters."""
    return response.islower() and is_language(response, "en")


COMMAS = ",，、﹐﹑､"


@_kind("punctuation:no_comma")
def _no_comma(response: str) -> bool:
    """No comma at all: `,` and the Chinese `，` and `、` (and their small / half-width forms)."""
    return not any(c in response for c in COMMAS)


# --- instructions --------------------------------------------------------------------------------------------------

_CROSS_CHECKS = {"length_constraints:nth_paragraph_first_word": _nth_paragraph_valid}


@dataclass(frozen=True)
class Instruction:
    """A kind with its validated, normalised arguments (`parse_instruction` makes one)."""

    kind: str
    args: dict[str, Any]

    def follows(self, response: str) -> bool:
        """IFEval's strict check: the response as it is (an all-white-space response follows nothing)."""
        return bool(response.strip()) and KINDS[self.kind].check(response, **self.args)

    def follows_loosely(self, variants: list[str]) -> bool:
        """IFEval's loose check over `loose_variants(response)`: any variant follows."""
        return any(v.strip() and KINDS[self.kind].check(v, **self.args) for v in variants)


def loose_variants(response: str) -> list[str]:
    """The eight responses IFEval's loose check tries: the response, without its first line, without its last, without
    both (those three stripped), and each with every `*` removed; in IFEval's order."""
    lines = response.split("\n")
    trimmed = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *trimmed, *(t.replace("*", "") for t in trimmed)]


def parse_instruction(spec: Any, where: str = "", *, file: Any = None, line: int | None = None) -> Instruction:
    """An `{"kind": ID, "args": {...}}` object as an Instruction; any mistake is one TunelabError naming `file`,
    `line` and the field under `where` (`instructions.1.args.num_words`)."""
    prefix = f"{where}." if where else ""
    if not isinstance(spec, dict):
        raise TunelabError(f"expected an object {{\"kind\": ..., \"args\": {{...}}}}, got {type(spec).__name__}",
                           file=file, line=line, field=f"{prefix}kind")
    if "kind" not in spec:
        raise TunelabError("missing field", file=file, line=line, field=f"{prefix}kind")
    return make_instruction(spec["kind"], spec.get("args"), kind_field=f"{prefix}kind", args_field=f"{prefix}args",
                            file=file, line=line)


def make_instruction(kind_id: Any, args: Any, *, kind_field: str = "kind", args_field: str = "args",
                     file: Any = None, line: int | None = None) -> Instruction:
    """A kind and its arguments (None: none) as an Instruction, validated and normalised; a mistake is a TunelabError
    naming `kind_field`, `args_field` or `args_field.NAME` (IFEval's files hold them in two parallel lists)."""
    def fail(message: str, field: str) -> TunelabError:
        return TunelabError(message, file=file, line=line, field=field)

    if not isinstance(kind_id, str) or kind_id not in KINDS:
        near = difflib.get_close_matches(str(kind_id), KINDS, n=1)
        hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(sorted(KINDS))}"
        raise fail(f"unknown instruction kind {json.dumps(kind_id, ensure_ascii=False)} ({hint})", kind_field)
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise fail(f"expected an object of arguments, got {type(args).__name__}", args_field)
    kind = KINDS[kind_id]
    for name in args:
        if name not in kind.args:
            takes = ", ".join(kind.args) or "none"
            raise fail(f"{kind_id} takes no argument '{name}' (its arguments: {takes})", f"{args_field}.{name}")
    values = {}
    for name, validate in kind.args.items():
        if name not in args:
            raise fail(f"missing argument of {kind_id}", f"{args_field}.{name}")
        try:
            values[name] = validate(args[name])
        except ValueError as e:
            raise fail(str(e), f"{args_field}.{name}") from e
    if kind_id in _CROSS_CHECKS:
        try:
            _CROSS_CHECKS[kind_id](values)
        except ValueError as e:
            raise fail(str(e), args_field) from e
    return Instruction(kind_id, values)
