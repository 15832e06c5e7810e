"""QA pairs about articles through any OpenAI-compatible endpoint, as one call: the settings checked, the
articles, prompt, rules and journal put together, the run, and its report file (`tunelab synth qa` is this call
with flags; errors name the settings' fields, which the command line shows as its flags)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tunelab.errors import TunelabError
from tunelab.synth.articles import ArticleSource, ReadOptions
from tunelab.synth.journal import Journal
from tunelab.synth.prompt import Prompt, load_template, read_text_arg
from tunelab.synth.runner import Runner, Settings
from tunelab.synth.validate import Rules


def resolve_api_key(value: str | None) -> str | None:
    """An API key as given, or `env:VAR` read from the environment (an unset variable is an error)."""
    if value is None or not value.startswith("env:"):
        return value
    key = os.environ.get(value[4:])
    if not key:
        raise TunelabError(f"environment variable {value[4:]} is not set", field="api_key")
    return key


def check_settings(settings: Settings, read: ReadOptions, rules: Rules) -> None:
    """Every number in range and the endpoint a URL, before any file is opened or request sent."""
    positive = {"concurrency": settings.concurrency, "max_tokens": settings.max_tokens,
                "chunk_chars": read.chunk_chars, "min_pairs": rules.min_pairs,
                "max_question_chars": rules.max_question_chars, "max_answer_chars": rules.max_answer_chars}
    for name, value in positive.items():
        if value < 1:
            raise TunelabError(f"must be at least 1, got {value}", field=name)
    if rules.max_pairs < rules.min_pairs:
        raise TunelabError(f"must be at least min_pairs ({rules.min_pairs}), got {rules.max_pairs}", field="max_pairs")
    for name, value in {"retries": settings.retries, "min_chars": read.min_chars}.items():
        if value < 0:
            raise TunelabError(f"must be 0 or more, got {value}", field=name)
    if settings.limit is not None and settings.limit < 1:
        raise TunelabError(f"must be at least 1, got {settings.limit}", field="limit")
    for name, value in {"timeout": settings.timeout, "backoff": settings.backoff}.items():
        if not value > 0 or value == float("inf"):
            raise TunelabError(f"must be a positive number of seconds, got {value}", field=name)
    if not 0 <= settings.temperature <= 2:
        raise TunelabError(f"must be between 0 and 2, got {settings.temperature}", field="temperature")
    if not 0 <= rules.min_grounding <= 1:
        raise TunelabError(f"must be between 0 and 1, got {rules.min_grounding}", field="min_grounding")
    if not settings.endpoint.startswith(("http://", "https://")):
        raise TunelabError(f"expected an http(s) URL such as http://localhost:8000/v1, got {settings.endpoint!r}",
                           field="endpoint")


def write_report(path: Path, report: dict) -> None:
    """Atomically: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def synthesize_qa(corpus: list[str], out: str | Path, settings: Settings, read: ReadOptions = ReadOptions(),
                  rules: Rules = Rules(), template: str | None = None, system: str | None = None,
                  on_report: Callable[[dict], None] | None = None) -> dict | None:
    """Ask `settings.model` for QA pairs about every article of `corpus` (prepared corpus directories and/or
    .jsonl/.json/.txt files or folders), appending the valid ones to `out` (JSONL; OUT.status.jsonl is the
    journal that makes a rerun resume, OUT.report.json the report). `template`: a prompt template file holding
    {article} (default: built-in, zh); `system`: a system message, or @FILE. The report is written, and given
    to `on_report`, even when the run is interrupted; it is returned."""
    check_settings(settings, read, rules)
    source = ArticleSource(corpus, read)
    journal = Journal(out)
    outputs = {p.resolve() for p in (journal.out, journal.status_path, journal.report_path)}
    for path in source.paths():
        if path.resolve() in outputs:
            raise TunelabError("is both an input and an output of this run", file=path, field="out")
    journal.check()
    prompt = Prompt(load_template(template), read_text_arg(system, "system") if system else None,
                    rules.min_pairs, rules.max_pairs)
    settings = replace(settings, endpoint=settings.endpoint.rstrip("/"), api_key=resolve_api_key(settings.api_key))
    runner = Runner(source, prompt, rules, journal, settings)
    try:
        asyncio.run(runner.run())
    finally:
        if runner.report is not None:
            write_report(journal.report_path, runner.report)
            if on_report is not None:
                on_report(runner.report)
    return runner.report
