"""Read every training/evaluation format into Example, so the rest of the pipeline sees one shape.

Formats (one JSON object per record, in a JSON array or JSONL file):

* competition:   {problem, solution, kind?}
* alpaca:        {instruction, input?, output}
* conversations: ShareGPT, {conversations: [{from: human|user|gpt|assistant|system|function_call|observation,
  value}, ...], system?, tools?}: every turn is kept (function_call is an assistant turn, observation a tool
  turn). One human turn and one gpt turn and nothing else is an instruction and its response; a human turn
  holding a whole rendered alpaca prompt is then unwrapped back to its instruction (and input), so
  re-rendering it gives the same prompt.
* messages:      OpenAI, {messages: [{role: system|user|assistant|tool, content}, ...], tools?}: every turn is
  kept; one user and one assistant message alone are an instruction and its response.

A conversation of several turns (or with a system or tool turn) becomes an Example holding them all
(`Example.messages`), its last user and assistant turns as instruction and output; it must end with an
assistant turn, the last thing it teaches.
* reading:       {context, question, answer}; the instruction comes from reading_instruction().
* choice:        {question, A, B, … | choices: [...], answer}: a multiple-choice question; the instruction
  comes from choice_prompt(), the options stay as data (`Example.choices`, exactly as written) and the
  answer (a letter or a 0-based index) as `Example.label`, its index; `output` is the letter.

An alpaca record may carry `choices` and `answer` too: its Example then keeps them as `choices`/`label` the same way, so a choice task never has to read
the options back out of the rendered instruction.

Every record may carry `id` (else "<file stem>-<index>") and `kind`. Any error names file, line, field.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.records import iter_records, require_str

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_INSTRUCTION, _INPUT, _RESPONSE = "### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:"


def split_alpaca_prompt(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a prompt rendered with the alpaca template: the text after the first
    "### Instruction:" up to "### Input:" or "### Response:", and the input up to "### Response:"; the whole
    prompt and no input when it has no such layout. Plain `str.find`s, so any text takes linear time (a
    regex search for the same layout backtracks quadratically on a prompt repeating its markers)."""
    start = prompt.find(_INSTRUCTION)
    end = prompt.find(_RESPONSE, start + len(_INSTRUCTION)) if start >= 0 else -1
    if end < 0:
        return prompt, ""
    body = prompt[start + len(_INSTRUCTION):end]
    instruction, marker, inp = body.partition(_INPUT)
    return (instruction, inp) if marker else (body, "")


def reading_instruction(context: str, question: str) -> str:
    """The reading-comprehension prompt, in the passage's language so the model answers in it too."""
    if _CJK.search(context):
        return f"阅读下面的短文，回答问题。\n{context}\n问题：{question}"
    return f"Read the passage and answer the question.\n{context}\nQuestion: {question}"


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHOICE_HEADERS = {
    "zh": "以下是一道单项选择题，请选出正确答案，只回答选项字母。",
    "en": "The following is a multiple-choice question. Answer with the letter of the correct option.",
}


def prompt_language(text: str) -> str:
    """"zh" when a third or more of `text`'s characters are CJK (a Chinese request, not an English one quoting a
    word of Chinese), else "en"."""
    return "zh" if len(_CJK.findall(text)) * 3 >= len(text.strip()) > 0 else "en"


def choice_lang(question: str, choices: Iterable[str]) -> str:
    """"zh" when the question or an option holds CJK text, else "en"."""
    return "zh" if _CJK.search(question) or any(_CJK.search(c) for c in choices) else "en"


def choice_prompt(question: str, choices: list[str], lang: str = "auto") -> str:
    """Header, question and one "X. option" line per option, in the question's language (or `lang`). Only
    rendered, never read back: the options travel as data next to it."""
    if lang == "auto":
        lang = choice_lang(question, choices)
    if lang not in CHOICE_HEADERS:
        raise TunelabError(f"unknown language '{lang}' (choose from auto, zh, en)", field="lang")
    lines = [CHOICE_HEADERS[lang], question.strip()]
    lines += [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def _choice_options(rec: dict[str, Any], path: Path, line: int) -> list[str]:
    if "choices" in rec:
        choices = rec["choices"]
        if not isinstance(choices, list):
            raise TunelabError(f"expected a list of strings, got {type(choices).__name__}", file=path, line=line,
                               field="choices")
        if len(choices) > len(LETTERS):  # before touching a hostile list's elements
            raise TunelabError(f"at most {len(LETTERS)} options are supported, found {len(choices)}", file=path,
                               line=line, field="choices")
        options = [require_str({f"choices[{i}]": c}, f"choices[{i}]", path, line) for i, c in enumerate(choices)]
    elif "A" in rec:
        options = []
        for letter in LETTERS:
            if letter not in rec:
                break
            options.append(require_str(rec, letter, path, line))
    else:
        raise TunelabError("no options: give 'choices' or option fields 'A', 'B', …", file=path, line=line,
                           field="choices")
    if len(options) < 2:
        raise TunelabError(f"a question needs at least 2 options, found {len(options)}", file=path, line=line,
                           field="choices" if "choices" in rec else "B")
    return options


def _choice_answer(rec: dict[str, Any], n: int, path: Path, line: int) -> int:
    if "answer" not in rec:
        raise TunelabError("missing field", file=path, line=line, field="answer")
    raw = rec["answer"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise TunelabError(f"expected a letter or an index, got {type(raw).__name__}", file=path, line=line,
                           field="answer")
    text = unicodedata.normalize("NFKC", str(raw)).strip() if isinstance(raw, str) else ""
    if isinstance(raw, int):
        index = raw
    elif text.isdecimal():  # "1", "１"; a long digit run is out of range rather than a huge int
        index = int(text) if len(text) <= 6 else n
    elif len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    else:
        raise TunelabError(f"answer {str(raw)[:40]!r} is neither an option letter nor a 0-based index", file=path,
                           line=line, field="answer")
    if not 0 <= index < n:
        raise TunelabError(f"answer {str(raw)[:40]!r} is out of range for {n} options (A–{LETTERS[n - 1]})",
                           file=path, line=line, field="answer")
    return index


def choice_fields(rec: dict[str, Any], path: Path | str, line: int) -> tuple[list[str], int]:
    """(options exactly as written, index of the answer) of a question record or of an alpaca record that
    carries `choices` and `answer`."""
    path = Path(path)
    options = _choice_options(rec, path, line)
    return options, _choice_answer(rec, len(options), path, line)


def choice_record(rec: dict[str, Any], path: Path, line: int, lang: str = "auto") -> dict[str, Any]:
    """The Example fields of a question record; `lang` forces the prompt's language."""
    question = require_str(rec, "question", path, line)
    choices, label = choice_fields(rec, path, line)
    lang = choice_lang(question, choices) if lang == "auto" else lang
    return {"instruction": choice_prompt(question, choices, lang), "output": LETTERS[label],
            "kind": _kind(rec, path, line) or f"choice-{lang}", "choices": choices, "label": label,
            "meta": {"question": question, "lang": lang}}  # to render the question again, its options shuffled


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


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _dialogue(rec: dict[str, Any], path: Path, line: int, key: str, speaker: str, text: str,
              roles: dict[str, str]) -> list[dict]:
    """Every turn as {role, content} (plus a turn's other keys, such as tool_calls); errors name the turn, e.g.
    'messages[1].content'."""
    turns = _turns(rec, key, path, line)
    out = []
    for i, turn in enumerate(turns):
        try:
            who = require_str(turn, speaker, path, line)
            content = turn.get(text)
            if content is None and roles.get(who) == "assistant" and turn.get("tool_calls"):
                content = ""  # a tool call's assistant turn may carry no text
            else:
                content = require_str(turn, text, path, line)
        except TunelabError as e:
            raise TunelabError(e.message, file=path, line=line, field=f"{key}[{i}].{e.field}") from e
        if who not in roles:
            raise TunelabError(f"unknown {speaker} '{who[:40]}' (known: {', '.join(roles)})", file=path, line=line,
                               field=f"{key}[{i}].{speaker}")
        extra = {k: v for k, v in turn.items() if k not in (speaker, text)}
        out.append({**extra, "role": roles[who], "content": content})
    if isinstance(rec.get("system"), str) and rec["system"] and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": rec["system"]})  # ShareGPT's system prompt beside the turns
    if not any(m["role"] == "user" for m in out):
        raise TunelabError("no user turn", file=path, line=line, field=key)
    if out[-1]["role"] != "assistant":
        raise TunelabError(f"the conversation ends with a {out[-1]['role']} turn: end it with the assistant turn "
                           "to learn", file=path, line=line, field=f"{key}[{len(out) - 1}]")
    return out


def _tools(rec: dict[str, Any], path: Path, line: int) -> list | None:
    """The tool schemas a conversation was held with (a list, or ShareGPT's JSON text of one), for the template."""
    tools = rec.get("tools")
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):
        import json
        try:
            tools = json.loads(tools)
        except ValueError as e:
            raise TunelabError(f"not JSON: {e}", file=path, line=line, field="tools") from e
    if not isinstance(tools, list):
        raise TunelabError(f"expected a list of tool schemas, got {type(tools).__name__}", file=path, line=line,
                           field="tools")
    return tools


def _chat_fields(turns: list[dict], rec, path, line, unwrap: bool) -> dict[str, Any]:
    """An instruction and its response when the turns are one user and one assistant turn and nothing else;
    else the whole conversation, its last user and assistant turns as instruction and output."""
    kind, tools = _kind(rec, path, line), _tools(rec, path, line)
    if [m["role"] for m in turns] == ["user", "assistant"] and tools is None and \
            not any(set(m) - {"role", "content"} for m in turns):
        instruction, inp = split_alpaca_prompt(turns[0]["content"]) if unwrap else (turns[0]["content"], "")
        return {"instruction": instruction, "input": inp, "output": turns[1]["content"], "kind": kind}
    last_user = next(m for m in reversed(turns) if m["role"] == "user")
    return {"instruction": last_user["content"], "output": turns[-1]["content"], "kind": kind, "messages": turns,
            "tools": tools}


def _competition(rec, path, line) -> dict[str, str]:
    problem, solution = _fields(rec, path, line, "problem", "solution")
    return {"instruction": problem, "output": solution, "kind": _kind(rec, path, line)}


def _alpaca(rec, path, line) -> dict[str, str]:
    instruction, output = _fields(rec, path, line, "instruction", "output")
    inp = require_str(rec, "input", path, line) if "input" in rec else ""
    fields = {"instruction": instruction, "input": inp, "output": output, "kind": _kind(rec, path, line)}
    if "choices" in rec:  # a choice question rendered into the instruction: keep its options and answer
        fields["choices"], fields["label"] = choice_fields(rec, path, line)
    return fields


def _conversations(rec, path, line) -> dict[str, Any]:
    turns = _dialogue(rec, path, line, "conversations", "from", "value", _SHAREGPT_ROLES)
    return _chat_fields(turns, rec, path, line, unwrap=True)


def _messages(rec, path, line) -> dict[str, Any]:
    turns = _dialogue(rec, path, line, "messages", "role", "content", _ROLES)
    return _chat_fields(turns, rec, path, line, unwrap=False)


def _reading(rec, path, line) -> dict[str, str]:
    context, question, answer = _fields(rec, path, line, "context", "question", "answer")
    lang = "zh" if _CJK.search(context) else "en"
    return {"instruction": reading_instruction(context, question), "output": answer,
            "kind": f"reading-{lang}"}


FORMATS: dict[str, Callable[[dict[str, Any], Path, int], dict[str, Any]]] = {
    "competition": _competition,
    "alpaca": _alpaca,
    "conversations": _conversations,
    "messages": _messages,
    "reading": _reading,
    "choice": choice_record,
}

# auto: the first format whose telltale keys the first record has
_SNIFF = [("conversations", {"conversations"}), ("messages", {"messages"}),
          ("competition", {"problem", "solution"}), ("reading", {"context", "question"}),
          ("choice", {"question", "answer"}), ("alpaca", {"instruction"})]


def _sniff(rec: dict[str, Any], path: Path, line: int) -> str:
    for name, keys in _SNIFF:
        if keys <= rec.keys():
            return name
    raise TunelabError(f"cannot tell the format from keys {sorted(rec)} "
                       f"(known formats: {', '.join(FORMATS)})", file=path, line=line)


def _examples(numbered: Iterable[tuple[int, dict[str, Any]]], format: str, origin: Path,
              stem: str | None = None, rows: list[int] | None = None) -> list[Example]:
    stem = origin.stem if stem is None else stem
    if format != "auto" and format not in FORMATS:
        raise TunelabError(f"unknown format '{format}' (choose from auto, {', '.join(FORMATS)})",
                           field="format")
    examples: list[Example] = []
    for index, (line, rec) in enumerate(numbered):
        if format == "auto":
            format = _sniff(rec, origin, line)
        ident = require_str(rec, "id", origin, line) if "id" in rec else f"{stem}-{index if rows is None else rows[index]}"
        examples.append(Example(id=ident, **FORMATS[format](rec, origin, line)))
    if not examples:
        raise TunelabError("no records", file=origin)
    return examples


def renamed(rec: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """`rec` with the keys (columns) `fields` maps, {format field: key}, under the format's field names: renamed,
    as `Dataset.rename_columns` would; a key it names that `rec` lacks stays missing (the format names it)."""
    if not fields or not isinstance(rec, dict):
        return rec
    used = set(fields.values())
    out = {k: v for k, v in rec.items() if k not in used}
    out.update({target: rec[key] for target, key in fields.items() if key in rec})
    return out


def read_examples(path: str | Path, format: str = "auto", fields: dict[str, str] | None = None) -> list[Example]:
    """All records of `path` as Examples; `format="auto"` decides from the first record's keys; `fields` renames
    keys to the format's fields first ({instruction: question})."""
    records = iter_records(path)
    if fields:
        records = ((line, renamed(rec, fields)) for line, rec in records)
    return _examples(records, format, Path(path))


def examples_from_records(records: list[dict[str, Any]], format: str,
                          origin: str = "records") -> list[Example]:
    """In-memory records (e.g. a generator's) as Examples; `origin` stands in for the file name in ids and
    errors, and a record's position (from 1) for its line."""
    return _examples(enumerate(records, start=1), format, Path(origin))


def examples_from_rows(rows: Iterable[dict[str, Any]], format: str, origin: str, stem: str,
                       row_numbers: list[int] | None = None) -> list[Example]:
    """A dataset's rows (a Hugging Face dataset's, streamed) as Examples: errors name `origin` and the row's place
    (from 1) as its line, and ids without an `id` column are "<stem>-<row>", the row's index in the dataset
    (`row_numbers[i]` for the i-th row given, when they are a sample)."""
    numbered = ((i + 1 if row_numbers is None else row_numbers[i] + 1, row) for i, row in enumerate(rows))
    return _examples(numbered, format, Path(origin), stem, row_numbers)
