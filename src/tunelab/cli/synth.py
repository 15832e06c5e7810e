"""`tunelab synth qa`: flags to settings, the run (`tunelab.synth.qa.synthesize_qa`), and its summary on the
console. Every setting's field is named as its flag (`max_pairs` -> `--max-pairs`) when an error names it."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import flags_for

_FIELDS = ["api_key", "backoff", "chunk_chars", "concurrency", "endpoint", "limit", "max_answer_chars", "max_pairs",
           "max_question_chars", "max_tokens", "min_chars", "min_grounding", "min_pairs", "model", "out", "retries",
           "split", "system", "temperature", "template", "timeout"]
_FLAGS = {name: "--" + name.replace("_", "-") for name in _FIELDS}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("synth", help="synthesise training data through any OpenAI-compatible endpoint")
    synth = p.add_subparsers(dest="synth_verb", metavar="KIND", required=True)
    q = synth.add_parser("qa", help="question–answer pairs about articles: validated, concurrent, resumable")
    q.add_argument("--corpus", nargs="+", required=True, metavar="DIR|FILE",
                   help="prepared corpus directories and/or .jsonl/.json/.txt files or folders of them")
    q.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    q.add_argument("--model", required=True, help="model id on the endpoint")
    q.add_argument("--api-key", default=None, help="KEY, or env:VAR to read it from an environment variable")
    q.add_argument("--out", required=True, help="pairs JSONL; OUT.status.jsonl and OUT.report.json beside it")
    q.add_argument("--template", default=None, help="prompt template file with {article} (default: built-in, zh)")
    q.add_argument("--system", default=None, help="system message, or @FILE")
    q.add_argument("--temperature", type=float, default=0.7)
    q.add_argument("--max-tokens", type=int, default=1024, help="most tokens of one reply")
    q.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    q.add_argument("--retries", type=int, default=3, help="extra attempts per article after an invalid reply or a "
                                                          "failed request (default 3)")
    q.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one reply (default 300)")
    q.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry of a failed "
                                                              "request, doubling (Retry-After wins)")
    q.add_argument("--retry-failed", action="store_true", help="ask again about articles recorded as failed")
    q.add_argument("--chunk-chars", type=int, default=1500, help="cut longer articles at sentence ends (default 1500)")
    q.add_argument("--min-chars", type=int, default=50, help="skip shorter articles (default 50)")
    q.add_argument("--split", default="all", help="of a prepared corpus: train, val or all (default)")
    q.add_argument("--limit", type=int, default=None, help="only the first N articles")
    q.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    q.add_argument("--id-field", default="id", help="JSON field used as source_id ('' for file:line)")
    q.add_argument("--title-field", default="title", help="JSON field holding the title ('' for none)")
    q.add_argument("--min-pairs", type=int, default=3, help="fewest pairs a reply may hold (default 3)")
    q.add_argument("--max-pairs", type=int, default=6, help="most pairs a reply may hold (default 6)")
    q.add_argument("--max-question-chars", type=int, default=200)
    q.add_argument("--max-answer-chars", type=int, default=500)
    q.add_argument("--min-grounding", type=float, default=0.5,
                   help="share of an answer's character bigrams that must occur in the article (default 0.5)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cli_synth_qa)


def summary(report: dict) -> list[str]:
    """The run's report as printed when it ends (finished or interrupted)."""
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


@flags_for(_FLAGS)
def cli_synth_qa(args: argparse.Namespace) -> int:
    from tunelab.synth.articles import ReadOptions
    from tunelab.synth.qa import synthesize_qa
    from tunelab.synth.runner import Settings
    from tunelab.synth.validate import Rules
    read = ReadOptions(chunk_chars=args.chunk_chars, min_chars=args.min_chars, split=args.split,
                       text_field=args.text_field, id_field=args.id_field or None, title_field=args.title_field or None)
    rules = Rules(args.min_pairs, args.max_pairs, args.max_question_chars, args.max_answer_chars, args.min_grounding)
    settings = Settings(endpoint=args.endpoint, model=args.model, api_key=args.api_key, temperature=args.temperature,
                        max_tokens=args.max_tokens, concurrency=args.concurrency, retries=args.retries,
                        timeout=args.timeout, backoff=args.backoff, retry_failed=args.retry_failed, limit=args.limit,
                        progress=not args.no_progress)
    synthesize_qa(args.corpus, args.out, settings, read, rules, args.template, args.system,
                  on_report=lambda report: print("\n".join(summary(report))))
    return 0
