"""The forms task: the forms of an everyday answer that a tuned small chat model loses where no other task looks,
judged by programs and no judge model, in English and Chinese.

Asked "list three yellow fruits", a LoRA-tuned SmolLM2-135M-Instruct named one fruit, or one fruit three times; asked
for a thank-you note it looped on one sentence where its base wrote a letter; asked in Chinese it answered in English
or in a loop. Each prompt here asks for a form and is judged by `tunelab.metrics.form_checks`: a list of so many
distinct items, a letter (greeting, body, sign-off), so many sentences or words; and every prompt also for its
answer's language (by script) and for not looping (repeated word / character 4-grams). An `ability: true` entry is
judged against the base's answers to the same prompts (`tunelab.eval.retention`) on `prompt_level_acc` (every check
of a prompt passed; the primary metric) and `check_level_acc` (checks passed). The results also hold `by_check` (each
kind's pass rate), `by_language`, and `repeated_share`, the mean share of repeated 4-grams (lower is better; the
repetition check fails an answer above `repetition.MAX_REPEATED_SHARE`).

A task of its own, not new kinds of `instructions`: those prompts add an explicit constraint to a request ("…
without commas") in IFEval's manner and are judged by IFEval's numbers, which loading IFEval's own files depends on;
these are plain requests whose form is the request itself, with checks (list, letter, loop) IFEval does not have.
Kept apart, each is an ability of its own beside the others in the retention verdict, and none of these prompts is
one that `general_prompts.jsonl` replays to or trains on (a test holds that).

Examples: `Example.instruction` is the prompt, `Example.kind` the language its answer must be in, and
`Example.meta["checks"]` its `[{"kind", "args"}]`, the language and repetition checks included. tunelab ships 52
everyday requests written for it, 26 English and 26 Chinese (`tasks/data/forms.jsonl`): 7 lists, 6 letters, 7
lengths and 6 open questions in each language, answerable within the task's `max_new_tokens` (320: a Chinese letter
takes about two tokens a character in SmolLM2's tokenizer). A user file is JSONL, one prompt a line:
`{"prompt": ..., "checks"?: [{"kind": ..., "args": {...}}], "id"?: ..., "language"?: ...}`. Without `checks` the
prompt's own words decide (`tunelab.metrics.form_requests`: "list three…", "写一封信", "in one sentence", "不少于50字");
without `language` its script does (`zh` when Han characters are most of its letters, else `en`). A `language` or
`repetition` check given in `checks` replaces the one every prompt gets. Bad JSON, a missing or empty prompt, an
unknown language, an unknown check or a bad argument is one TunelabError naming file, line and field
(`checks.0.args.count`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.form_checks import parse_check
from tunelab.metrics.form_requests import requested_checks
from tunelab.metrics.instruction_checks import LANGUAGE_SCRIPTS, script_language
from tunelab.records import prompt_records, read_text, require_str
from tunelab.tasks.registry import Task, register_task

SHIPPED = "forms.jsonl"


def _checks_of(rec: dict[str, Any], prompt: str, language: str, path: str | Path, line: int) -> list[dict[str, Any]]:
    """The record's checks, each valid, with the language and repetition checks every prompt gets."""
    if "checks" in rec:
        listed = rec["checks"]
        if not isinstance(listed, list):
            raise TunelabError("expected a list of {\"kind\", \"args\"} objects", file=path, line=line, field="checks")
        checks = [parse_check(spec, f"checks.{i}", file=path, line=line) for i, spec in enumerate(listed)]
    else:
        checks = [parse_check(spec) for spec in requested_checks(prompt)]
    kinds = {c.kind for c in checks}
    if "language" not in kinds:
        checks.append(parse_check({"kind": "language", "args": {"language": language}}))
    if "repetition" not in kinds:
        checks.append(parse_check({"kind": "repetition"}))
    return [{"kind": c.kind, "args": c.args} for c in checks]


def read_form_prompts(path: str | Path) -> list[Example]:
    """The prompts of a JSONL file (see the module docstring)."""
    return parse_form_prompts(read_text(path, "JSONL text"), path)


def parse_form_prompts(jsonl: str, path: str | Path) -> list[Example]:
    """The prompts of JSONL text read from `path` (named in errors)."""
    examples, seen = [], set()
    for line, rec, prompt in prompt_records(jsonl, path):
        ident = str(rec.get("id", line))
        if ident in seen:
            raise TunelabError(f"id '{ident}' is used by an earlier prompt", file=path, line=line, field="id")
        seen.add(ident)
        language = require_str(rec, "language", path, line) if "language" in rec else script_language(prompt)
        if language not in LANGUAGE_SCRIPTS:
            raise TunelabError(f"unknown language '{language}' (languages told by script: "
                               f"{', '.join(LANGUAGE_SCRIPTS)})", file=path, line=line, field="language")
        checks = _checks_of(rec, prompt, language, path, line)
        examples.append(Example(id=ident, instruction=prompt, output="", kind=language, meta={"checks": checks}))
    if not examples:
        raise TunelabError("no prompts in the file", file=path)
    return examples


@register_task
class FormsTask(Task):
    name = "forms"
    primary_metric = "prompt_level_acc"
    right_or_wrong = True
    ability = True
    retention_metrics = {"prompt_level_acc": 100.0, "check_level_acc": 100.0}
    settings = ("max_new_tokens",)
    counts = ("max_new_tokens",)
    max_new_tokens: int = 320  # a short Chinese letter, at about two tokens a character, ends within it

    def default_examples(self) -> list[Example]:
        shipped = files("tunelab.tasks").joinpath("data", SHIPPED)  # package data: perhaps inside a zip
        return parse_form_prompts(shipped.read_text(encoding="utf-8"), str(shipped))

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_form_prompts(path)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        specs = example.meta.get("checks")
        if not specs:
            raise TunelabError("the example has no checks (the forms task grades prompts read by its own reader: "
                               "a JSONL of {prompt, checks?})")
        kinds, passed, found = [], [], {}
        for i, spec in enumerate(specs):
            check = parse_check(spec, f"checks.{i}")
            ok, details = check.judge(prediction)
            kinds.append(check.kind)
            passed.append(ok)
            found.update(details)
        return {"correct": all(passed), "kinds": kinds, "passed": passed, "language": example.kind, **found}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        out = _accuracies(graded)
        kinds: dict[str, list[bool]] = {}
        languages: dict[str, list[dict[str, Any]]] = {}
        for g in graded:
            for kind, ok in zip(g["kinds"], g["passed"]):
                kinds.setdefault(kind, []).append(ok)
            languages.setdefault(g.get("language") or "all", []).append(g)
        out["by_check"] = {kind: {"n": len(results), "acc": _mean(results)} for kind, results in sorted(kinds.items())}
        out["by_language"] = {lang: _accuracies(items) for lang, items in sorted(languages.items())}
        return out


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0


def _accuracies(graded: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt- and check-level accuracy (0-1), the mean repeated share and the count of prompts."""
    return {"prompt_level_acc": _mean([g["correct"] for g in graded]),
            "check_level_acc": _mean([ok for g in graded for ok in g["passed"]]),
            "repeated_share": _mean([g["repeated_share"] for g in graded if "repeated_share" in g]),
            "n": len(graded)}
