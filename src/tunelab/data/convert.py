"""Convert competition records ({problem, solution}) to the training formats other tools expect.

With an instruction prefix or --cot the added text is baked into the instruction/user content of every
format, so a converted file trains the same prompt whichever tool reads it; read_examples() reads all
three back (unwrapping the rendered alpaca prompt of the conversations format).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tunelab.data.synthetic.arithmetic import write_records
from tunelab.data.templates import AUTO, MODEL, PromptTemplate
from tunelab.errors import TunelabError
from tunelab.records import iter_records, require_str


def _instruction(template: PromptTemplate, problem: str) -> str:
    """Prefix + problem (+ CoT) joined exactly as PromptTemplate.render joins them (via 'plain')."""
    plain = PromptTemplate("plain", template.instruction_prefix, template.cot)
    return plain.render(problem).removesuffix("\n")


def _conversations(problem: str, solution: str, template: PromptTemplate, index: int) -> dict[str, Any]:
    return {"id": f"identity_{index}", "conversations": [
        {"from": "human", "value": template.render(problem)},
        {"from": "gpt", "value": solution},
    ]}


def _alpaca(problem: str, solution: str, template: PromptTemplate, index: int) -> dict[str, Any]:
    return {"instruction": _instruction(template, problem), "input": "", "output": solution}


def _messages(problem: str, solution: str, template: PromptTemplate, index: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": _instruction(template, problem)},
                         {"role": "assistant", "content": solution}]}


CONVERTERS: dict[str, Callable[[str, str, PromptTemplate, int], dict[str, Any]]] = {
    "conversations": _conversations,
    "alpaca": _alpaca,
    "messages": _messages,
}


def convert_record(rec: dict, fmt: str, template: PromptTemplate, index: int) -> dict:
    """One competition record (string `problem` and `solution`) in format `fmt`; `index` numbers the ids."""
    if fmt not in CONVERTERS:
        raise TunelabError(f"unknown training format '{fmt}' (choose from {', '.join(CONVERTERS)})",
                           field="format")
    return CONVERTERS[fmt](rec["problem"], rec["solution"], template, index)


def convert_file(source: str | Path, out: str | Path, fmt: str, template: PromptTemplate) -> int:
    """`tunelab data convert`: every record of `source` in format `fmt`, written to `out` (.json or .jsonl).
    Every record is checked (file, line, field) before anything is written. Returns the number of records."""
    if template.name in (MODEL, AUTO):  # a chat model's template renders at training time, from the messages
        raise TunelabError(f"template '{template.name}' is rendered by the model's tokenizer when it trains: write "
                           "plain turns with --format messages (or conversations with --template none)",
                           field="template")
    path = Path(source)
    converted = []
    for index, (line, rec) in enumerate(iter_records(path)):
        problem = require_str(rec, "problem", path, line)
        solution = require_str(rec, "solution", path, line)
        converted.append(convert_record({"problem": problem, "solution": solution}, fmt, template, index))
    write_records(out, converted)
    return len(converted)
