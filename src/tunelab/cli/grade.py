"""`tunelab grade …`: a prediction file against gold answers, one sub-verb per task. No model is involved, so
nothing heavy is imported and the verb starts at once; the grading is each task module's `grade_*_files`."""

from __future__ import annotations

import argparse
import json


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("grade", help="grade a prediction file against gold answers")
    grade = p.add_subparsers(dest="task", metavar="TASK", required=True)
    q = grade.add_parser("arithmetic", help="numeric comparison of final answers, with diagnostics")
    q.add_argument("--pred", required=True, help="JSONL with 'prediction' (and 'id'), or one answer per line")
    q.add_argument("--gold", required=True, help="competition JSON/JSONL with 'solution' (and 'id')")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cli_grade_arithmetic)

    q = grade.add_parser("squad", help="SQuAD v1.1 exact match and F1 (official, cmrc, mindformers scorers)")
    q.add_argument("--pred", required=True, help="official prediction JSON {question_id: answer}")
    q.add_argument("--gold", required=True, help="SQuAD v1.1 JSON (e.g. dev-v1.1.json)")
    q.add_argument("--scorer", choices=["auto", "official", "cmrc", "mindformers", "all"], default="auto",
                   help="auto: cmrc for Chinese gold, else official; all: the three side by side")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cli_grade_squad)

    q = grade.add_parser("choice", help="multiple choice: extract the chosen letter, accuracy")
    q.add_argument("--pred", required=True, help="JSONL with 'prediction' (and 'id'), or one answer per line")
    q.add_argument("--gold", required=True,
                   help="questions {question, A..D or choices, answer} or alpaca records, JSON/JSONL")
    q.add_argument("--ratio", type=float, default=None, help="also print the stage-2 score for this ratio")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cli_grade_choice)

    q = grade.add_parser("glue", help="GLUE CoLA/QQP labels: accuracy, MCC/F1 and the exam rubric")
    q.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    q.add_argument("--pred", required=True, help="one generated label per line (e.g. result_CoLA.txt)")
    q.add_argument("--gold", required=True, help="one label per line, a labelled GLUE TSV or pre_data JSON")
    q.add_argument("--pre-data", default=None, help="pre_data folder to check for the rubric (10 points)")
    q.add_argument("--model-dir", default=None, help="saved model folder to check for the rubric (20 points)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cli_grade_glue)


def cli_grade_arithmetic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.tasks.arithmetic import format_grade_report, grade_arithmetic_files
    summary = grade_arithmetic_files(args.pred, args.gold)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_grade_report(summary, Path(args.pred), Path(args.gold)))
    return 0


def cli_grade_squad(args: argparse.Namespace) -> int:
    """`tunelab grade squad --pred PRED.json --gold DEV.json [--scorer ...] [--json]`."""
    from tunelab.metrics.qa_metrics import SCORERS
    from tunelab.tasks.squad import grade_squad_files
    graded = grade_squad_files(args.pred, args.gold, list(SCORERS) if args.scorer == "all" else [args.scorer])
    results, unknown = graded["results"], graded["unknown_ids"]
    if args.json:
        out = {"scorers": results} if args.scorer == "all" else dict(results[args.scorer])
        print(json.dumps({**out, "unknown_ids": unknown}, indent=2, ensure_ascii=False))
        return 0
    print(f"squad: {graded['questions']} questions, {args.pred} against {args.gold}")
    if args.scorer != "all":
        r = results[args.scorer]
        label = f"{r['scorer']} (auto)" if r.get("auto") else r["scorer"]
        print(f"  scorer       {label}")
        print(f"  exact_match  {r['exact_match']:.2f}")
        print(f"  f1           {r['f1']:.2f}")
        print(f"  questions    {r['n']}, {r['missing']} without a prediction")
    else:
        print(f"  {'scorer':<12}{'n':>7}{'exact_match':>13}{'f1':>8}{'missing':>9}")
        for s, r in results.items():
            print(f"  {s:<12}{r['n']:>7}{r['exact_match']:>13.2f}{r['f1']:>8.2f}{r['missing']:>9}")
    if unknown:
        print(f"  note: {unknown} predictions have ids not in the gold file (ignored)")
    return 0


def cli_grade_choice(args: argparse.Namespace) -> int:
    """`tunelab grade choice --pred FILE --gold FILE [--ratio R] [--json]`."""
    from tunelab.tasks.choice import grade_choice_files
    summary = grade_choice_files(args.pred, args.gold, args.ratio)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"choice: {summary['n']} questions, {args.pred} against {args.gold}")
    print(f"  accuracy   {summary['accuracy']:8.2%}")
    print(f"  unparsed   {summary['unparsed']:>5} ({summary['unparsed_rate']:.2%})")
    print("  rules      " + ", ".join(f"{r} {c}" for r, c in summary["by_rule"].items()))
    if args.ratio is not None:
        print(f"  stage2     {summary['stage2_score']:.6f}  = (1 - 10 * {args.ratio:g}) * 0.3 + accuracy * 0.7")
    return 0


def cli_grade_glue(args: argparse.Namespace) -> int:
    """`tunelab grade glue --task CoLA|QQP --pred FILE --gold FILE [--pre-data DIR] [--model-dir DIR]`."""
    from tunelab.data.glue import canonical_task
    from tunelab.tasks.glue import grade_glue_files
    metrics = grade_glue_files(args.task, args.pred, args.gold, args.pre_data, args.model_dir)
    if args.json:
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
        return 0
    task = canonical_task(args.task)
    print(f"{task}: {metrics['n']} answers, {args.pred} against {args.gold}")
    print(f"  accuracy   {metrics['accuracy']:8.2%}")
    if task == "CoLA":
        print(f"  mcc        {metrics['mcc']:8.4f}")
    else:
        print(f"  f1         {metrics['f1']:8.4f}")
    note = f"  (lines {', '.join(map(str, metrics['unparsed_lines']))}" + (
        ", …)" if metrics["unparsed"] > 20 else ")") if metrics["unparsed"] else ""
    print(f"  unparsed   {metrics['unparsed']:>5}{note}")
    r = metrics["rubric"]
    print("  rubric")
    for key, points, label in (("pre_data", 10, "pre_data files"), ("model", 20, "saved model")):
        if r[key] is None:
            print(f"    {label:<16} not checked (pass --{'pre-data' if key == 'pre_data' else 'model-dir'})")
        else:
            print(f"    {label:<16} {r[key]:>5.1f} / {points}")
            for problem in r[f"{key}_problems"]:
                print(f"      - {problem}")
    print(f"    {'70 × accuracy':<16} {r['accuracy']:>5.1f} / 70")
    print(f"    {'total':<16} {r['total']:>5.1f} / 100")
    return 0
