"""`tunelab synth qa`: flags to settings, the run, the report file and a summary on the console."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.synth.articles import ArticleSource, ReadOptions
from tunelab.synth.journal import Journal
from tunelab.synth.prompt import Prompt, load_template, read_text_arg
from tunelab.synth.runner import Runner, Settings
from tunelab.synth.validate import Rules


def resolve_api_key(value: str | None) -> str | None:
    """`--api-key KEY` as given, `env:VAR` from the environment (an unset variable is an error)."""
    if value is None or not value.startswith("env:"):
        return value
    key = os.environ.get(value[4:])
    if not key:
        raise TunelabError(f"environment variable {value[4:]} is not set", field="--api-key")
    return key


def _check(args) -> None:
    positive = {"--concurrency": args.concurrency, "--max-tokens": args.max_tokens, "--chunk-chars": args.chunk_chars,
                "--min-pairs": args.min_pairs, "--max-question-chars": args.max_question_chars,
                "--max-answer-chars": args.max_answer_chars}
    for flag, value in positive.items():
        if value < 1:
            raise TunelabError(f"must be at least 1, got {value}", field=flag)
    if args.max_pairs < args.min_pairs:
        raise TunelabError(f"must be at least --min-pairs ({args.min_pairs}), got {args.max_pairs}",
                           field="--max-pairs")
    for flag, value in {"--retries": args.retries, "--min-chars": args.min_chars}.items():
        if value < 0:
            raise TunelabError(f"must be 0 or more, got {value}", field=flag)
    if args.limit is not None and args.limit < 1:
        raise TunelabError(f"must be at least 1, got {args.limit}", field="--limit")
    for flag, value in {"--timeout": args.timeout, "--backoff": args.backoff}.items():
        if not value > 0 or value == float("inf"):
            raise TunelabError(f"must be a positive number of seconds, got {value}", field=flag)
    if not 0 <= args.temperature <= 2:
        raise TunelabError(f"must be between 0 and 2, got {args.temperature}", field="--temperature")
    if not 0 <= args.min_grounding <= 1:
        raise TunelabError(f"must be between 0 and 1, got {args.min_grounding}", field="--min-grounding")
    if not args.endpoint.startswith(("http://", "https://")):
        raise TunelabError(f"expected an http(s) URL such as http://localhost:8000/v1, got {args.endpoint!r}",
                           field="--endpoint")


def write_report(path: Path, report: dict) -> None:
    """Atomically: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summary(report: dict) -> list[str]:
    a, p, r = report["articles"], report["pairs"], report["requests"]

    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    lines = [f"synth qa: {a['total']} articles ({a['done']} done, {a['failed']} failed, {a['already_finished']} "
             f"finished before) in {report['seconds']:.1f} s"
             + (f", {report['articles_per_second']:.2f} articles/s" if report["articles_per_second"] else "")
             + (" — interrupted" if report["interrupted"] else ""),
             f"  pairs accepted {p['accepted']}, rejected {sum(p['rejected_by_reason'].values())} "
             f"({counts(p['rejected_by_reason'])})",
             f"  replies rejected: {counts(report['replies_rejected_by_reason'])}",
             f"  requests {r['sent']} ({r['retries']} retries; failed: {counts(r['failed_by_reason'])})"
             + (f"; tokens {report['tokens']['prompt'] or 0:,} prompt + {report['tokens']['completion'] or 0:,} "
                f"completion" if report["tokens"] else "; the server reported no token usage")]
    if a["too_short_skipped"]:
        lines.append(f"  {a['too_short_skipped']} articles shorter than --min-chars skipped")
    if a["failed"]:
        lines.append(f"  failed articles: {counts(a['failed_by_reason'])} (reasons in the journal; rerun with "
                     "--retry-failed to ask again)")
    fixed = report["repaired"]
    if fixed["partial_journal_line"] or fixed["uncommitted_lines_removed"]:
        lines.append(f"  repaired an interrupted run: {fixed['uncommitted_lines_removed']} uncommitted output "
                     f"line(s) removed" + (", a partial journal line cut" if fixed["partial_journal_line"] else ""))
    o = report["output"]
    lines.append(f"  {report['out']}: {o['pairs']} pairs from {o['articles_done']} articles "
                 f"({o['articles_failed']} failed)")
    return lines


def cli_synth_qa(args) -> int:
    _check(args)
    options = ReadOptions(chunk_chars=args.chunk_chars, min_chars=args.min_chars, split=args.split,
                          text_field=args.text_field, id_field=args.id_field or None,
                          title_field=args.title_field or None)
    source = ArticleSource(args.corpus, options)
    journal = Journal(args.out)
    outputs = {p.resolve() for p in (journal.out, journal.status_path, journal.report_path)}
    for path in source.paths():
        if path.resolve() in outputs:
            raise TunelabError("is both an input and an output of this run", file=path, field="--out")
    journal.check()
    prompt = Prompt(load_template(args.template), read_text_arg(args.system, "--system") if args.system else None,
                    args.min_pairs, args.max_pairs)
    rules = Rules(args.min_pairs, args.max_pairs, args.max_question_chars, args.max_answer_chars, args.min_grounding)
    settings = Settings(endpoint=args.endpoint.rstrip("/"), model=args.model, api_key=resolve_api_key(args.api_key),
                        temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency,
                        retries=args.retries, timeout=args.timeout, backoff=args.backoff,
                        retry_failed=args.retry_failed, limit=args.limit, progress=not args.no_progress)
    runner = Runner(source, prompt, rules, journal, settings)
    try:
        asyncio.run(runner.run())
    finally:
        if runner.report is not None:
            write_report(journal.report_path, runner.report)
            print("\n".join(summary(runner.report)))
    return 0
