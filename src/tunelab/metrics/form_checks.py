"""The checks of the forms task, each a program over one answer (no judge model), English and Chinese alike:

* `list_items` {count}: the answer lists exactly `count` items, none named twice (`tunelab.metrics.list_items`).
* `letter`: a greeting, a body and a sign-off on lines of their own (`tunelab.metrics.letter_form`).
* `sentences` {count, relation}, `words` {count, relation}: `instruction_checks`' sentence and word counts (a Han
  character is a word, so "不少于50字" is 50 words) `exactly`, `at least` or `at most` `count`.
* `language` {language}: the answer is in the language's script, more than half of its letters
  (`instruction_checks.is_language`: Han without kana for `zh`, Latin for `en`).
* `repetition`: the answer does not loop: at most `repetition.MAX_REPEATED_SHARE` of its word 4-grams (character
  4-grams in Chinese) repeated (`tunelab.metrics.repetition`).

An all-white-space answer passes none. A check is written `{"kind": ..., "args": {...}}`; `parse_check` validates
one and names the field of a mistake (`checks.1.args.count`), as `instruction_checks.parse_instruction` does.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.metrics.instruction_checks import LANGUAGE_SCRIPTS, count_sentences, count_words, is_language
from tunelab.metrics.letter_form import letter_parts
from tunelab.metrics.list_items import item_heads, list_items
from tunelab.metrics.repetition import MAX_REPEATED_SHARE, repeated_share

RELATIONS = ("exactly", "at least", "at most")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {json.dumps(value, ensure_ascii=False)}")
    return value


def _relation(value: Any) -> str:
    if value not in RELATIONS:
        raise ValueError(f"expected one of {' / '.join(repr(r) for r in RELATIONS)}, "
                         f"got {json.dumps(value, ensure_ascii=False)}")
    return value


def _language(value: Any) -> str:
    if value not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {json.dumps(value, ensure_ascii=False)} (languages told by script: "
                         f"{', '.join(LANGUAGE_SCRIPTS)})")
    return value


def _compare(actual: int, relation: str, count: int) -> bool:
    return actual == count if relation == "exactly" else actual >= count if relation == "at least" else actual <= count


def _list_items(answer: str, count: int) -> tuple[bool, dict[str, Any]]:
    heads = item_heads(list_items(answer))
    distinct = len(set(heads))
    return len(heads) == count == distinct, {"items": len(heads), "distinct_items": distinct}


def _letter(answer: str) -> tuple[bool, dict[str, Any]]:
    parts = letter_parts(answer)
    return parts.is_letter, {"greeting": parts.greeting is not None, "sign_off": parts.sign_off is not None,
                             "body_words": parts.body_words}


def _sentences(answer: str, count: int, relation: str) -> tuple[bool, dict[str, Any]]:
    found = count_sentences(answer)
    return _compare(found, relation, count), {"sentences": found}


def _words(answer: str, count: int, relation: str) -> tuple[bool, dict[str, Any]]:
    found = count_words(answer)
    return _compare(found, relation, count), {"words": found}


def _language_check(answer: str, language: str) -> tuple[bool, dict[str, Any]]:
    return is_language(answer, language), {}


def _repetition(answer: str) -> tuple[bool, dict[str, Any]]:
    share = repeated_share(answer)
    return share <= MAX_REPEATED_SHARE, {"repeated_share": share}


@dataclass(frozen=True)
class CheckKind:
    """A kind of check: its arguments (name: validator returning the value; all required) and its judge (answer and
    arguments -> (passed, what was found))."""

    args: dict[str, Callable[[Any], Any]]
    judge: Callable[..., tuple[bool, dict[str, Any]]]


KINDS: dict[str, CheckKind] = {
    "list_items": CheckKind({"count": _count}, _list_items),
    "letter": CheckKind({}, _letter),
    "sentences": CheckKind({"count": _count, "relation": _relation}, _sentences),
    "words": CheckKind({"count": _count, "relation": _relation}, _words),
    "language": CheckKind({"language": _language}, _language_check),
    "repetition": CheckKind({}, _repetition),
}


@dataclass(frozen=True)
class FormCheck:
    """A kind with its validated arguments (`parse_check` makes one)."""

    kind: str
    args: dict[str, Any]

    def judge(self, answer: str) -> tuple[bool, dict[str, Any]]:
        """(passed, what was found: item, sentence or word counts, the repeated share…) for one answer."""
        passed, found = KINDS[self.kind].judge(answer, **self.args)
        return passed and bool(answer.strip()), found


def parse_check(spec: Any, where: str = "", *, file: Any = None, line: int | None = None) -> FormCheck:
    """A `{"kind", "args"}` object as a FormCheck; a mistake is one TunelabError naming `file`, `line` and the field
    under `where` (`checks.0.args.count`)."""
    prefix = f"{where}." if where else ""

    def fail(message: str, field: str) -> TunelabError:
        return TunelabError(message, file=file, line=line, field=f"{prefix}{field}")

    if not isinstance(spec, dict):
        raise fail(f"expected an object {{\"kind\": ..., \"args\": {{...}}}}, got {type(spec).__name__}", "kind")
    kind_id = spec.get("kind")
    if "kind" not in spec:
        raise fail("missing field", "kind")
    if not isinstance(kind_id, str) or kind_id not in KINDS:
        near = difflib.get_close_matches(str(kind_id), KINDS, n=1)
        hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(KINDS)}"
        raise fail(f"unknown check kind {json.dumps(kind_id, ensure_ascii=False)} ({hint})", "kind")
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise fail(f"expected an object of arguments, got {type(args).__name__}", "args")
    kind = KINDS[kind_id]
    for name in args:
        if name not in kind.args:
            raise fail(f"{kind_id} takes no argument '{name}' (its arguments: {', '.join(kind.args) or 'none'})",
                       f"args.{name}")
    values = {}
    for name, validate in kind.args.items():
        if name not in args:
            raise fail(f"missing argument of {kind_id}", f"args.{name}")
        try:
            values[name] = validate(args[name])
        except ValueError as e:
            raise fail(str(e), f"args.{name}") from e
    return FormCheck(kind_id, values)
