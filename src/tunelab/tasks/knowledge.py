"""The knowledge task: short factual questions in English and Chinese, a general ability a fine-tuned chat model
must keep (the facts a chat model should still know after it learned arithmetic). Judged for retention against
the base model on its accuracy.

Data: tunelab ships `tasks/data/knowledge.jsonl` (questions written for tunelab: capitals, planets, everyday
science, famous people, units, Chinese culture), used when an eval entry gives no source. A user file is JSONL
(or a JSON array) of `{"question", "answers": [...], "id"?, "language"?, "topic"?, "rejected"?: [...]}`:
`answers` are every accepted answer and alias ("7", "seven", "七"), the first one being the reference;
`language` defaults to `zh` for a question holding CJK text, else `en`; `rejected` are the wrong answers a
listing would name (see below). An Example keeps the question as `instruction`, the first answer as `output`,
all of them as `answers`, the language as `kind`, and the topic and rejected answers in `meta`.

The question is asked as it is, in the model's own chat template, and the whole generation is graded by
containment. Its length is the task's setting `max_new_tokens` (48 by default: a chat model answers in a sentence;
`--option knowledge.max_new_tokens=64`, or a recipe entry's `options:`), which the runner prefers to the
evaluation's `--max-new-tokens`. Grading:

* both sides are normalised (`normalize`): NFKC (full-width letters and digits become ASCII), casefold,
  the name dot of transliterated names and apostrophes dropped ("达·芬奇" is "达芬奇", "Xi'an" is "xian",
  "Newton's" is "newtons", where the plural rule below finds "Newton"), spaces next to CJK text dropped
  ("约 365 天" is "约365天"), every other punctuation mark or symbol (Chinese punctuation included) a space
  — but a "." or "," between two digits stays part of the number ("3.14", "1,000") — English articles
  removed, whitespace collapsed;
* an accepted answer is found when its normalised form occurs in the normalised prediction, as a substring
  for CJK text and on token boundaries otherwise: an answer cannot begin or end inside a run of letters and digits
  ("7" is not in "17" or "7.5", "Paris" is not in "Parisian"), except that an English answer may take a
  plural "s"/"es" ("mammal" is in "mammals"); nor can a number end beside another digit or Chinese numeral
  ("七" is not in "十七" or "七十", "十二" is not in "二十二");
* numbers are not converted: "7", "seven" and "七" count because the data lists all three (and "1000" is
  not "1,000"), nor are traditional characters made simplified: aliases in the data cover what matters.

Listing every candidate ("Sydney, Melbourne, Canberra") is guarded against only where the data names
`rejected` answers: the answer mentioned first decides, so "Canberra, not Sydney" is right and "Sydney or
Canberra" wrong; at one place the longer answer wins, so a rejected "水蒸气" is not an accepted "水", nor a
rejected "京都" inside "东京都". A correct answer that first names a wrong one ("not Sydney but Canberra") is
therefore counted wrong, and an item without `rejected` answers cannot tell a list from an answer. Yes/no
questions, answers a negation flips and answers that are only an English article ("A") do not suit containment
and are not in the shipped set (a user file with such an answer is refused).

Per item: `correct`, `matched` (the accepted answer found, as the data writes it), `rejected` (the rejected
answer mentioned before it, or anywhere when none was found), `language`, `topic`. Metrics: `accuracy` (0-1,
like the other accuracy tasks; retention puts it on 0-100), `n`, `by_language` and, when items have topics,
`by_topic` ({name: {n, accuracy}}). The language is the Example's `kind` and the topic sits in `meta`, so the
two breakdowns stay independent (a `kind` of "en/geography" would tie them together).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.qa_metrics import has_cjk
from tunelab.records import iter_records, require_str
from tunelab.tasks.registry import Task, register_task

SHIPPED = Path(__file__).parent / "data" / "knowledge.jsonl"

_CJK_RANGES = ("\u2e80-\u2fdf\u3005-\u3007\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
               "\U00020000-\U0003134f")
_CJK = re.compile(f"[{_CJK_RANGES}]")
_CJK_NUMERALS = frozenset("〇零一二三四五六七八九十百千万亿两萬億兩")
# dropped, not spaced: the dot of a transliterated name (达·芬奇, ダ・ヴィンチ) and apostrophes (Xi'an, Newton's)
_JOINERS = str.maketrans("", "", "\u00b7\u30fb\u2027'\u2018\u2019\u02bc")
_SPACE_BY_CJK = re.compile(f"[ \t]+(?=[{_CJK_RANGES}])|(?<=[{_CJK_RANGES}])[ \t]+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize(text: str) -> str:
    """The form answers and predictions are compared in (see the module docstring), so that case, width,
    punctuation and spacing never decide whether a fact was known."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_JOINERS)
    text = _SPACE_BY_CJK.sub("", text)
    chars = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "PS":
            in_number = ch in ".," and 0 < i < len(text) - 1 and _is_digit(text[i - 1]) and _is_digit(text[i + 1])
            ch = ch if in_number else " "
        chars.append(ch)
    return " ".join(_ARTICLES.sub(" ", "".join(chars)).split())


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_word(ch: str) -> bool:
    """A letter or digit of a script written with spaces (or a number's own "." / ","): matches end at its edge."""
    return (ch.isalnum() or ch in ".,") and not _CJK.match(ch)


def _is_numeral(ch: str) -> bool:
    return _is_digit(ch) or ch in _CJK_NUMERALS or ch in ".,"


def _joined(a: str, b: str) -> bool:
    """Whether adjacent characters `a`, `b` belong to one token, so that a match cannot begin or end between
    them: two letters or digits of a spaced script, or two numerals of any script ("十七", "7万")."""
    return (_is_word(a) and _is_word(b)) or (_is_numeral(a) and _is_numeral(b))


def find_answer(answer: str, text: str) -> int | None:
    """Where normalised `answer` first occurs in normalised `text` as a whole token (see `_joined`; an English
    answer may take a plural "s"/"es"), or None."""
    if not answer:
        return None
    start = text.find(answer)
    while start >= 0:
        end = start + len(answer)
        if start == 0 or not _joined(text[start - 1], answer[0]):
            ends = [end]
            if "a" <= answer[-1] <= "z":
                ends += [end + len(s) for s in ("s", "es") if text.startswith(s, end)]
            if any(e == len(text) or not _joined(text[e - 1], text[e]) for e in ends):
                return start
        start = text.find(answer, start + 1)
    return None


def _first_mentioned(answers: list[str], text: str) -> tuple[str | None, int]:
    """The answer (as written) whose normalised form occurs earliest in normalised `text`, the longest at a tie,
    and its position (len(text) + 1 when none occurs)."""
    best, best_key = None, (len(text) + 1, 0)
    for answer in answers:
        form = normalize(answer)
        at = find_answer(form, text)
        if at is not None and (at, -len(form)) < best_key:
            best, best_key = answer, (at, -len(form))
    return best, best_key[0]


def grade_knowledge(prediction: str, accepted: list[str], rejected: list[str] = ()) -> dict[str, Any]:
    """{correct, matched, rejected}: right when an accepted answer occurs in the prediction before any
    rejected one (a rejected answer at the same place only when it is the longer: "South America" over
    "America")."""
    text = normalize(prediction)
    matched, at = _first_mentioned(accepted, text)
    wrong, wrong_at = _first_mentioned(list(rejected), text)
    if wrong is not None and matched is not None:
        wrong_first = (wrong_at, -len(normalize(wrong))) < (at, -len(normalize(matched)))
        wrong = wrong if wrong_first else None
    return {"correct": matched is not None and wrong is None, "matched": matched, "rejected": wrong}


def read_knowledge(path: str | Path) -> list[Example]:
    """The examples of a knowledge file (format in the module docstring); a missing or empty field, an answer
    that normalises to nothing, or a repeated id is a TunelabError naming file, line and field."""
    examples, seen = [], {}
    for line, rec in iter_records(path):
        question = _text(rec, "question", path, line)
        answers = _answers(rec, "answers", path, line, required=True)
        rejected = _answers(rec, "rejected", path, line, required=False)
        ident = _text(rec, "id", path, line) if "id" in rec else f"knowledge-{line}"
        if ident in seen:
            raise TunelabError(f"id '{ident}' is also the id of line {seen[ident]}", file=path, line=line, field="id")
        seen[ident] = line
        language = _text(rec, "language", path, line) if "language" in rec else ("zh" if has_cjk(question) else "en")
        topic = _text(rec, "topic", path, line) if "topic" in rec else ""
        examples.append(Example(id=ident, instruction=question, output=answers[0], answers=answers,
                                kind=language.casefold(), meta={"topic": topic, "rejected": rejected}))
    return examples


def _text(rec: dict, field: str, path, line: int) -> str:
    value = require_str(rec, field, path, line).strip()
    if not value:
        raise TunelabError("empty", file=path, line=line, field=field)
    return value


def _answers(rec: dict, field: str, path, line: int, required: bool) -> list[str]:
    if field not in rec:
        if required:
            raise TunelabError("missing field (a list of accepted answers)", file=path, line=line, field=field)
        return []
    values = rec[field]
    if not isinstance(values, list):
        raise TunelabError(f"expected a list of strings, got {type(values).__name__}", file=path, line=line,
                           field=field)
    if required and not values:
        raise TunelabError("empty (give at least one accepted answer)", file=path, line=line, field=field)
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not normalize(value):
            what = (f"{value!r}, empty after normalisation (punctuation and English articles are dropped)"
                    if isinstance(value, str) else f"a {type(value).__name__}, not a string")
            raise TunelabError(f"answer {i} is {what}", file=path, line=line, field=f"{field}.{i}")
        out.append(value.strip())
    return out


@register_task
class KnowledgeTask(Task):
    name = "knowledge"
    primary_metric = "accuracy"
    right_or_wrong = True
    ability = True
    retention_metrics = {"accuracy": 100.0}
    settings = ("max_new_tokens",)
    counts = ("max_new_tokens",)
    max_new_tokens = 48

    def default_examples(self) -> list[Example]:
        return read_knowledge(SHIPPED)

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_knowledge(path)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        accepted = example.answers or [example.output]
        graded = grade_knowledge(prediction, accepted, example.meta.get("rejected", []))
        language = example.kind or ("zh" if has_cjk(example.instruction) else "en")
        return {**graded, "language": language, "topic": example.meta.get("topic", "")}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        def accuracy(items: list[dict]) -> dict[str, Any]:
            return {"n": len(items), "accuracy": sum(g["correct"] for g in items) / len(items) if items else 0.0}

        def by(key: str) -> dict[str, dict]:
            groups: dict[str, list[dict]] = {}
            for g in graded:
                if g.get(key):
                    groups.setdefault(g[key], []).append(g)
            return {name: accuracy(items) for name, items in sorted(groups.items())}

        out = {**accuracy(graded), "by_language": by("language")}
        if topics := by("topic"):
            out["by_topic"] = topics
        return out
