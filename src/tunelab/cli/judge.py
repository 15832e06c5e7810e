"""`tunelab judge`: model A's answers against model B's, prompt by prompt, by the programmatic judge (known
answers) or a model behind an OpenAI-compatible endpoint. The work is `tunelab.judge`."""

from __future__ import annotations

import argparse

from tunelab.cli.arguments import flags_for, integer

_FLAGS = {"endpoint": "--endpoint", "references": "--references", "answers": "ANSWERS_A/ANSWERS_B",
          "judge_name": "--judge-name", "model_b": "--model-b"}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("judge", help="win / tie / loss of model A's answers against model B's (programmatic "
                                       "judge on known answers, or a model through an OpenAI-compatible URL)")
    p.add_argument("answers_a", metavar="ANSWERS_A", help="model A's answers: `tunelab generate A --file P --json` "
                                                          "output, or JSONL of {prompt, answer}")
    p.add_argument("answers_b", metavar="ANSWERS_B", help="model B's answers, the same way")
    p.add_argument("--sample-a", type=integer(1), default=1, help="which sample of each prompt A's file gives "
                                                                   "(`tunelab generate -n N`; default 1)")
    p.add_argument("--sample-b", type=integer(1), default=1, help="the same for B: with one model's file as both A "
                                                                   "and B, --sample-b 2 judges its two samples")
    p.add_argument("--references", default=None, metavar="FILE",
                   help="the prompts with their reference answers (reference|answer|solution|output)")
    p.add_argument("--match", choices=["numeric", "exact"], default="numeric",
                   help="programmatic judge: the final number equal (default) or the whole text")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="judge with a model behind this OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1), "
                        "both answer orders asked; without it the programmatic judge decides")
    p.add_argument("--judge-model", default="default", help="the endpoint's model name")
    p.add_argument("--api-key", default=None, help="the endpoint's key (default: $OPENAI_API_KEY, else none)")
    p.add_argument("--out", default=None, metavar="FILE", help="write each prompt's judgment as JSONL")
    p.add_argument("--arena", default=None, metavar="VOTES.db",
                   help="also write each judgment into this arena database as a vote of --judge-name, kept apart "
                        "from people's votes (the leaderboard counts people's only)")
    p.add_argument("--judge-name", default=None, help="the judge's name in the arena (with --arena)")
    p.add_argument("--model-a", default="A", help="model A's name in the arena (default A)")
    p.add_argument("--model-b", default="B", help="model B's name in the arena (default B)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cli_judge)


@flags_for(_FLAGS)
def cli_judge(args: argparse.Namespace) -> int:
    import json
    import os

    from tunelab.judge import judge_answers, read_answers, read_references
    from tunelab.records import write_jsonl
    endpoint = None
    if args.endpoint:
        from tunelab.judge.endpoint import EndpointJudge
        endpoint = EndpointJudge(args.endpoint, args.judge_model,
                                 args.api_key or os.environ.get("OPENAI_API_KEY") or "none")
    refs = read_references(args.references) if args.references else None
    tally, judged, unmatched = judge_answers(read_answers(args.answers_a, args.sample_a),
                                             read_answers(args.answers_b, args.sample_b), refs, endpoint, args.match)
    if args.out:
        write_jsonl(args.out, (j.record() for j in judged))
    if args.arena:
        from tunelab.judge import write_to_arena
        name = args.judge_name or (f"programmatic-{args.match}" if endpoint is None else args.judge_model)
        added = write_to_arena(args.arena, judged, name, args.model_a, args.model_b)
        print(f"{added} votes of judge {name!r} written to {args.arena} ({len(judged) - added} already there)")
    summary = {**tally.summary(), "unmatched_prompts": unmatched,
               "judge": f"model {args.judge_model} at {args.endpoint}" if endpoint else f"programmatic ({args.match})"}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    lo, hi = summary["ci95"]
    print(f"A against B on {summary['prompts']} prompts, judged by the {summary['judge']} judge: "
          f"{summary['wins']} wins, {summary['ties']} ties, {summary['losses']} losses")
    print(f"A's win rate (a tie half a win): {100 * summary['win_rate']:.1f} % (95 % CI {100 * lo:.1f}–{100 * hi:.1f})")
    if endpoint is None:
        n = summary["prompts"]
        print(f"right answers: A {summary['right_a']} ({100 * summary['right_a'] / n:.1f} %), "
              f"B {summary['right_b']} ({100 * summary['right_b'] / n:.1f} %)")
    notes = [f"{summary['inconsistent']} ties where the two orders disagreed" if summary["inconsistent"] else "",
             f"{summary['unjudged']} ties where the judge named no verdict" if summary["unjudged"] else "",
             f"{unmatched} prompts only one file answers, not judged" if unmatched else ""]
    for note in filter(None, notes):
        print(note)
    return 0
