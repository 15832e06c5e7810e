"""Read every training/evaluation format into Example, so the rest of the pipeline sees one shape.

Formats (one JSON object per record, in a JSON array or JSONL file):

* competition:   {problem, solution, kind?}
* alpaca:        {instruction, input?, output}
* conversations: {conversations: [{from: human|user, value}, {from: gpt|assistant, value}, ...]}; the
  first human turn and the next gpt turn are used. A human turn holding a whole rendered alpaca prompt
  is unwrapped back to its instruction (and input), so re-rendering it gives the same prompt.
* messages:      {messages: [{role, content}, ...]}; system messages are ignored, the first user message
  and the next assistant message are used.
* reading:       {context, question, answer}; the instruction comes from reading_instruction().

Every record may carry `id` (else "<file stem>-<index>") and `kind`. Any error names file, line, field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable

from tunelab.data.examples import Example
from tunelab.data.records import iter_records, require_str
from tunelab.errors import TunelabError

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ALPACA_PROMPT = re.compile(
    r"### Instruction:\n(?P<instruction>.*?)\n\n(?:### Input:\n(?P<input>.*?)\n\n)?### Response:", re.S)


def reading_instruction(context: str, question: str) -> str:
    """The reading-comprehension prompt, in the passage's language so the model answers in it too."""
    if _CJK.search(context):
        return f"阅读下面的短文，回答问题。\n{context}\n问题：{question}"
    return f"Read the passage and answer the question.\n{context}\nQuestion: {question}"


def _fields(rec: dict[str, Any], path: Path, line: int, *names: str) -> list[str]:
    return [require_str(rec, name, path, line) for name in names]


def _kind(rec: dict[str, Any], path: Path, line: int) -> str:
    return require_str(rec, "kind", path, line) if "kind" in rec else ""


def _turns(rec: dict[str, Any], key: str, path: Path, line: int) -> list[dict[str, Any]]:
    if key not in rec:
        raise TunelabError("missing field", file=path, line=line, field=key)
    turns = rec[key]
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise TunelabError("expected a list of objects", file=path, line=line, field=key)
    return turns


def _dialogue(rec: dict[str, Any], path: Path, line: int, key: str, speaker: str, text: str,
              asks: tuple[str, ...], answers: tuple[str, ...]) -> tuple[str, str]:
    """(first asking turn, the answering turn after it); errors name the turn, e.g. 'messages[1].content'."""
    turns = _turns(rec, key, path, line)

    def get(i: int, name: str) -> str:
        try:
            return require_str(turns[i], name, path, line)
        except TunelabError as e:
            raise TunelabError(e.message, file=path, line=line, field=f"{key}[{i}].{name}") from None

    ask = next((i for i in range(len(turns)) if get(i, speaker) in asks), None)
    if ask is None:
        raise TunelabError(f"no turn with {speaker} {' or '.join(asks)}", file=path, line=line, field=key)
    answer = next((i for i in range(ask + 1, len(turns)) if get(i, speaker) in answers), None)
    if answer is None:
        raise TunelabError(f"no {' or '.join(answers)} turn after the {asks[0]} turn", file=path, line=line,
                           field=key)
    return get(ask, text), get(answer, text)


def _competition(rec, path, line) -> dict[str, str]:
    problem, solution = _fields(rec, path, line, "problem", "solution")
    return {"instruction": problem, "output": solution, "kind": _kind(rec, path, line)}


def _alpaca(rec, path, line) -> dict[str, str]:
    instruction, output = _fields(rec, path, line, "instruction", "output")
    inp = require_str(rec, "input", path, line) if "input" in rec else ""
    return {"instruction": instruction, "input": inp, "output": output, "kind": _kind(rec, path, line)}


def _conversations(rec, path, line) -> dict[str, str]:
    prompt, output = _dialogue(rec, path, line, "conversations", "from", "value",
                               ("human", "user"), ("gpt", "assistant"))
    m = _ALPACA_PROMPT.search(prompt)
    instruction, inp = (m.group("instruction"), m.group("input") or "") if m else (prompt, "")
    return {"instruction": instruction, "input": inp, "output": output, "kind": _kind(rec, path, line)}


def _messages(rec, path, line) -> dict[str, str]:
    instruction, output = _dialogue(rec, path, line, "messages", "role", "content", ("user",), ("assistant",))
    return {"instruction": instruction, "output": output, "kind": _kind(rec, path, line)}


def _reading(rec, path, line) -> dict[str, str]:
    context, question, answer = _fields(rec, path, line, "context", "question", "answer")
    lang = "zh" if _CJK.search(context) else "en"
    return {"instruction": reading_instruction(context, question), "output": answer,
            "kind": f"reading-{lang}"}


FORMATS: dict[str, Callable[[dict[str, Any], Path, int], dict[str, str]]] = {
    "competition": _competition,
    "alpaca": _alpaca,
    "conversations": _conversations,
    "messages": _messages,
    "reading": _reading,
}

# auto: the first format whose telltale keys the first record has
_SNIFF = [("conversations", {"conversations"}), ("messages", {"messages"}),
          ("competition", {"problem", "solution"}), ("reading", {"context", "question"}),
          ("alpaca", {"instruction"})]


def _sniff(rec: dict[str, Any], path: Path, line: int) -> str:
    for name, keys in _SNIFF:
        if keys <= rec.keys():
            return name
    raise TunelabError(f"cannot tell the format from keys {sorted(rec)} "
                       f"(known formats: {', '.join(FORMATS)})", file=path, line=line)


def _examples(numbered: Iterable[tuple[int, dict[str, Any]]], format: str, origin: Path) -> list[Example]:
    if format != "auto" and format not in FORMATS:
        raise TunelabError(f"unknown format '{format}' (choose from auto, {', '.join(FORMATS)})",
                           field="format")
    examples: list[Example] = []
    for index, (line, rec) in enumerate(numbered):
        if format == "auto":
            format = _sniff(rec, origin, line)
        ident = require_str(rec, "id", origin, line) if "id" in rec else f"{origin.stem}-{index}"
        examples.append(Example(id=ident, **FORMATS[format](rec, origin, line)))
    if not examples:
        raise TunelabError("no records", file=origin)
    return examples


def read_examples(path: str | Path, format: str = "auto") -> list[Example]:
    """All records of `path` as Examples; `format="auto"` decides from the first record's keys."""
    return _examples(iter_records(path), format, Path(path))


def examples_from_records(records: list[dict[str, Any]], format: str,
                          origin: str = "records") -> list[Example]:
    """In-memory records (e.g. a generator's) as Examples; `origin` stands in for the file name in ids and
    errors, and a record's position (from 1) for its line."""
    return _examples(enumerate(records, start=1), format, Path(origin))
