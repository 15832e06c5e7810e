"""The instructions task: verifiable instruction following in the manner of IFEval (Zhou et al. 2023).

A general ability a fine-tuned chat model must keep, judged by programs and no judge model: each prompt carries
one or more instructions ("answer in fewer than 40 words", "no commas", "wrap the answer in JSON with the keys
name and reason") whose compliance `tunelab.metrics.instruction_checks` checks. The metrics are IFEval's four on
0-1 under lm-evaluation-harness's names — `prompt_level_strict_acc` (every instruction of the prompt followed; the
primary metric), `inst_level_strict_acc` (instructions followed), and their `loose` forms (IFEval's loose check:
an intro or closing line, or `*` markup, forgiven) — with `by_kind` (per instruction kind) and `by_language`.

Examples: `Example.instruction` is the prompt, `Example.meta["instructions"]` its `[{"kind", "args"}]`, and
`Example.kind` the prompt's language (`en`, `zh`…). tunelab ships 167 everyday requests written for it, 87 English
and 80 Chinese, covering each of the 29 kinds at least 5 times (`tasks/data/instructions.jsonl`), all answerable within
the task's `max_new_tokens` (160; no "at least 300 words"): the task is run on small models on CPUs, many times.
A user file is JSONL, one prompt a line, in either shape:

* tunelab's: `{"prompt": ..., "instructions": [{"kind": ID, "args": {...}}], "id"?: ..., "language"?: ...}`
* IFEval's input_data.jsonl: `{"key", "prompt", "instruction_id_list", "kwargs"}` (null kwargs are dropped, as
  lm-evaluation-harness does for the Hugging Face copy, whose kwargs name every argument).

Without `language` the prompt's own script decides (`zh` when Han characters are most of its letters, else `en`).
An unknown kind, a bad or missing argument, bad JSON or a missing field is one TunelabError naming file, line and
field (`instructions.1.args.num_words`; `kwargs.1.num_words` in IFEval's shape).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.instruction_checks import loose_variants, make_instruction, parse_instruction, script_language
from tunelab.records import prompt_records, read_text, require_str
from tunelab.tasks.registry import Task, register_task

SHIPPED = "instructions.jsonl"


def _instructions_of(rec: dict[str, Any], path: str | Path, line: int) -> list[dict[str, Any]]:
    """The record's instructions as stored in `Example.meta` (`[{"kind", "args"}]` as given), once each is known to
    be valid, from either shape."""
    if "instruction_id_list" in rec:  # IFEval's shape
        ids, kwargs = rec["instruction_id_list"], rec.get("kwargs")
        if not isinstance(ids, list) or not ids:
            raise TunelabError("expected a non-empty list of instruction ids", file=path, line=line,
                               field="instruction_id_list")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise TunelabError(f"expected a list of {len(ids)} argument objects, one per instruction id",
                               file=path, line=line, field="kwargs")
        specs = []
        for i, (kind, args) in enumerate(zip(ids, kwargs)):
            if isinstance(args, dict):  # the Hugging Face copy names every argument of every kind, unused ones null
                args = {k: v for k, v in args.items() if v is not None}
            make_instruction(kind, args, kind_field=f"instruction_id_list.{i}", args_field=f"kwargs.{i}", file=path,
                             line=line)
            specs.append({"kind": kind, "args": args})
        return specs
    if "instructions" not in rec:
        raise TunelabError("missing field (a prompt's instructions, or IFEval's instruction_id_list)", file=path,
                           line=line, field="instructions")
    listed = rec["instructions"]
    if not isinstance(listed, list) or not listed:
        raise TunelabError("expected a non-empty list of {\"kind\", \"args\"} objects", file=path, line=line,
                           field="instructions")
    for i, spec in enumerate(listed):
        parse_instruction(spec, f"instructions.{i}", file=path, line=line)
    return [{"kind": spec["kind"], "args": dict(spec.get("args") or {})} for spec in listed]


def read_instruction_prompts(path: str | Path) -> list[Example]:
    """The prompts of a JSONL file in tunelab's or IFEval's shape (see the module docstring)."""
    return parse_instruction_prompts(read_text(path, "JSONL text"), path)


def parse_instruction_prompts(jsonl: str, path: str | Path) -> list[Example]:
    """The prompts of JSONL text read from `path` (named in errors)."""
    examples, seen = [], set()
    for line, rec, prompt in prompt_records(jsonl, path):
        instructions = _instructions_of(rec, path, line)
        ident = str(rec.get("id", rec.get("key", line)))
        if ident in seen:
            raise TunelabError(f"id '{ident}' is used by an earlier prompt", file=path, line=line,
                               field="id" if "id" in rec else "key")
        seen.add(ident)
        language = require_str(rec, "language", path, line) if "language" in rec else script_language(prompt)
        examples.append(Example(id=ident, instruction=prompt, output="", kind=language,
                                meta={"instructions": instructions}))
    if not examples:
        raise TunelabError("no prompts in the file", file=path)
    return examples


@register_task
class InstructionsTask(Task):
    name = "instructions"
    primary_metric = "prompt_level_strict_acc"
    right_or_wrong = True
    ability = True
    retention_metrics = {"prompt_level_strict_acc": 100.0, "inst_level_strict_acc": 100.0}
    settings = ("max_new_tokens",)
    counts = ("max_new_tokens",)
    max_new_tokens: int = 160  # every shipped prompt can be followed in fewer tokens, with a small model's verbosity

    def default_examples(self) -> list[Example]:
        shipped = files("tunelab.tasks").joinpath("data", SHIPPED)  # package data: perhaps inside a zip
        return parse_instruction_prompts(shipped.read_text(encoding="utf-8"), str(shipped))

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_instruction_prompts(path)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        specs = example.meta.get("instructions")
        if not specs:
            raise TunelabError("the example has no instructions to check (the instructions task grades prompts read "
                               "by its own reader: a JSONL of {prompt, instructions} or IFEval's input file)")
        instructions = [parse_instruction(spec, f"instructions.{i}") for i, spec in enumerate(specs)]
        variants = loose_variants(prediction)
        strict = [inst.follows(prediction) for inst in instructions]
        loose = [inst.follows_loosely(variants) for inst in instructions]
        return {"correct": all(strict), "loose_correct": all(loose), "kinds": [i.kind for i in instructions],
                "strict": strict, "loose": loose, "language": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        out = _accuracies(graded)
        kinds: dict[str, list[tuple[bool, bool]]] = {}
        languages: dict[str, list[dict[str, Any]]] = {}
        for g in graded:
            for kind, strict, loose in zip(g["kinds"], g["strict"], g["loose"]):
                kinds.setdefault(kind, []).append((strict, loose))
            languages.setdefault(g.get("language") or "all", []).append(g)
        out["by_kind"] = {kind: {"n": len(results), "strict_acc": _mean([s for s, _ in results]),
                                 "loose_acc": _mean([lo for _, lo in results])}
                          for kind, results in sorted(kinds.items())}
        out["by_language"] = {lang: _accuracies(items) for lang, items in sorted(languages.items())}
        return out


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _accuracies(graded: list[dict[str, Any]]) -> dict[str, Any]:
    """IFEval's four numbers (0-1) and the count of prompts."""
    inst_strict = [s for g in graded for s in g["strict"]]
    inst_loose = [lo for g in graded for lo in g["loose"]]
    return {"prompt_level_strict_acc": _mean([g["correct"] for g in graded]),
            "inst_level_strict_acc": _mean(inst_strict),
            "prompt_level_loose_acc": _mean([g["loose_correct"] for g in graded]),
            "inst_level_loose_acc": _mean(inst_loose),
            "n": len(graded)}
