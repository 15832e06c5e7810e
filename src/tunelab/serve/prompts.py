"""Lists of prompts a user hands tunelab (`tunelab ui --examples`, `tunelab generate --file` or a pipe), read one
way: a .json list (of strings, or of objects with a prompt, instruction, problem, question or text), .jsonl
(one such item a line), anything else one prompt a line. Unreadable bytes, malformed JSON, a .json that is not
a list and a prompt that is not valid Unicode are errors naming the file (and line); items with no prompt, and
blank lines, are skipped."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.records import iter_lines, lone_surrogate, parse_json, read_text

PROMPT_KEYS = ("prompt", "instruction", "problem", "question", "text")


def read_prompts(path: str | Path, field: str) -> list[str]:
    """The prompts of a file; `field` (the setting that named it) goes into errors."""
    p = Path(path)
    if not p.exists():
        raise TunelabError("prompts file not found", file=path, field=field)
    text = read_text(p)
    if p.suffix == ".json":
        document = parse_json(text, p)
        if not isinstance(document, list):
            raise TunelabError(f"expected a JSON list of prompts, got {type(document).__name__}", file=p,
                               field=field)
        items = [(None, item) for item in document]
    elif p.suffix == ".jsonl":
        items = [(n, parse_json(line, p, n)) for n, line in iter_lines(text)]
    else:
        items = list(iter_lines(text))
    prompts = []
    for line, item in items:
        prompt = _prompt_of(item)
        if prompt is None:
            continue
        if (at := lone_surrogate(prompt)) is not None:
            raise TunelabError(f"a prompt that is not valid Unicode (a lone surrogate at character {at})",
                               file=p, line=line, field=field)
        prompts.append(prompt)
    if not prompts:
        raise TunelabError("no prompts found in the file", file=path, field=field)
    return prompts


def _prompt_of(item) -> str | None:
    if isinstance(item, dict):
        item = next((item[k] for k in PROMPT_KEYS if isinstance(item.get(k), str)), None)
    return item if isinstance(item, str) and item.strip() else None
