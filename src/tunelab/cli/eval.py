"""`tunelab eval` and `tunelab predict`: a model on tasks, and the GLUE hand-in file. `eval`'s flags become the
recipe's eval section (`EvalConfig`), so a flag is checked exactly as the recipe key it stands for, and an error
in a field is shown as the flag that set it; the work is `tunelab.evaluate` / `tunelab.predict`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tunelab.cli.arguments import add_ckpt_inputs, add_engine, add_model, add_placement, engine_from_flags, flags_for
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.recipe import EvalConfig


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("eval", help="evaluate a model, checkpoint or run directory on tasks")
    add_model(p, "run directory, checkpoint, HF or adapter directory, hub id, .gguf file or MindFormers .ckpt")
    add_ckpt_inputs(p)
    p.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="a run directory: evaluate only its best or last checkpoint (default: every checkpoint, the "
                        "best marked)")
    p.add_argument("--tasks", default="arithmetic", help="comma-separated task names")
    p.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                   help="data file for a task, or a prepared corpus directory for ppl/continuation (repeatable); "
                        "instructions, forms, knowledge and base_agreement have sets of their own")
    p.add_argument("--limit", type=int, default=None, help="the first N examples of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", default=None, help="output directory (default: <model>/eval-<tasks>)")
    p.add_argument("--mode", default=None, metavar="MODE|TASK=MODE,…",
                   help="a mode for every task that has it, the others run their own default (loglik: choice, "
                        "cola and qqp score options/labels by log-likelihood, the rest generate); or per task: "
                        "--mode choice=loglik,cola=generate (a mode the task lacks is an error)")
    p.add_argument("--baseline", default=None, metavar="BASE_MODEL_OR_RESULTS_JSON",
                   help="report ability metrics (squad, reading: f1, exact_match) as %% of this base's")
    p.add_argument("--retention-threshold", type=float, default=0.9, help="PASS at this fraction (0.9)")
    p.add_argument("--retention-min-base", type=float, default=5.0,
                   help="a base F1/EM (0-100) below this cannot be judged against (5)")
    p.add_argument("--segmentation", choices=["auto", "char", "jieba", "word"], default=None,
                   help="Rouge-L tokens for rougel and continuation (default auto: char for Chinese, else word)")
    p.add_argument("--window", type=int, default=None, help="ppl: tokens per window (default: model context)")
    p.add_argument("--stride", type=int, default=None, help="ppl: window start step (default: window/2)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="a task setting, e.g. choice.continuation=text, ppl.documents=file (repeatable)")
    p.add_argument("--samples", type=int, default=None, metavar="K",
                   help="K answers sampled a prompt besides the greedy one, for every task whose answers are right "
                        "or wrong: pass@1..pass@K and maj@K (the headroom RL can turn into first answers)")
    p.add_argument("--temperature", type=float, default=1.0, help="the samples' temperature (1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="the samples' top-p (1.0)")
    p.add_argument("--sample-seed", type=int, default=0, help="the samples' seed (0)")
    add_placement(p)
    add_engine(p)
    p.set_defaults(func=cli_eval)

    p = verbs.add_parser("predict", help="GLUE hand-in file: first N dev predictions, one 0/1 label per line")
    add_model(p, "run directory (best checkpoint), checkpoint, HF or adapter directory, or hub id")
    p.add_argument("--task", required=True, type=str.strip, metavar="CoLA|QQP")
    p.add_argument("--data", required=True, help="dev/test TSV or pre_data {task}_dev.json")
    p.add_argument("--limit", type=int, default=150, help="first N examples (default 150; 0 = all)")
    p.add_argument("--mode", choices=["generate", "loglik"], default="generate",
                   help="loglik compares the two label continuations: no parsing")
    p.add_argument("--out", default="result_{task}.txt")
    p.add_argument("--label-words", default=None, metavar="W0,W1", help="loglik label words (default 0,1)")
    p.add_argument("--strict", action="store_true", help="an unparseable generation is an error")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8)
    add_placement(p)
    p.set_defaults(func=cli_predict)


def cli_eval(args: argparse.Namespace) -> int:
    from tunelab.eval.evaluate import evaluate
    model = args.model
    if args.checkpoint is not None:
        from pathlib import Path

        from tunelab.runs import is_run_dir, pick_checkpoint
        if not is_run_dir(model):
            raise TunelabError("--checkpoint picks a checkpoint of a run directory; this is not one", file=model,
                               field="--checkpoint")
        model = str(pick_checkpoint(Path(model), args.checkpoint).parent)
    try:
        doc, out_root = evaluate(model, config_from_flags(args), args.out, args.baseline,
                                 mindformers_config=args.mindformers_config, tokenizer=args.tokenizer,
                                 engine=engine_from_flags(args))
    except TunelabError as e:
        shown = _eval_flag(e)
        if shown is e:
            raise
        raise shown from e
    print_table(doc)
    print(f"results: {out_root / 'results.json'}")
    return 0


@flags_for({"limit": "--limit", "strict": "--strict", "label_words": "--label-words", "device": "--device"})
def cli_predict(args: argparse.Namespace) -> int:
    import sys

    from tunelab.eval.predict import MAJORITY, predict
    result = predict(args.model, args.task, args.data, args.out, limit=args.limit, mode=args.mode,
                     label_words=args.label_words, strict=args.strict, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, device=args.device, precision=args.precision)
    d, written = result.details, result.labels
    print(f"{d['task']}: {len(written)} predictions ({args.mode}) -> {result.out}  (0: {written.count(0)}, "
          f"1: {written.count(1)}); details {result.details_path}")
    if "accuracy_as_written" in d:
        print(f"  the data is labelled: accuracy {d['accuracy_as_written']:.2%} as written, "
              f"{d['accuracy_unparsed_wrong']:.2%} with unparsed answers counted wrong")
    unparsed = [u["line"] for u in d["unparsed_lines"]]
    if unparsed:
        lines = ", ".join(str(i) for i in unparsed[:20]) + (", …" if len(unparsed) > 20 else "")
        print(f"tunelab: warning: {len(unparsed)} of {len(written)} generations are not a {d['task']} label "
              f"(lines {lines}); written as the majority label {MAJORITY[d['task']]}, listed in "
              f"{result.details_path}", file=sys.stderr)
    return 0


def config_from_flags(args: argparse.Namespace) -> EvalConfig:
    """`tunelab eval`'s flags as the recipe's eval section. Only the flags' own syntax is checked here;
    everything else is checked by the schema and `eval_sets`, as for a recipe."""
    from tunelab.recipe import validate_eval
    from tunelab.tasks.registry import get_task, ships_examples
    names = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not names:
        raise TunelabError("no task given", field="--tasks")
    for name in names:  # a misspelt task is named as such, not as a task without --data
        try:
            get_task(name)
        except TunelabError as e:
            raise TunelabError(e.message, field="--tasks") from e
    files = dict(_pairs(args.data, "--data", "TASK=FILE"))
    for name in files:
        if name not in names:
            raise TunelabError(f"'{name}' is not among --tasks ({', '.join(names)})", field="--data")
    for name in names:
        if name not in files and not ships_examples(type(get_task(name))):
            raise TunelabError(f"no data for task '{name}': pass --data {name}=FILE")
    mode, modes = args.mode, {}
    if mode and "=" in mode:  # per task: choice=loglik,cola=generate
        modes = dict(_pairs([x for x in mode.split(",") if x.strip()], "--mode", "TASK=MODE"))
        mode = None
        for name in modes:
            if name not in names:
                raise TunelabError(f"'{name}' is not among --tasks ({', '.join(names)})", field="--mode")
    options: dict[str, dict] = {name: {} for name in names}
    for key, value in _pairs(args.options, "--option", "TASK.KEY=VALUE"):
        name, _, setting = key.partition(".")
        if name not in names or not setting:
            raise TunelabError(f"'{key}': expected TASK.KEY with TASK one of {', '.join(names)}", field="--option")
        options[name][setting] = _value(value)
    raw = {"tasks": [{"task": name, "source": {"path": files[name]} if name in files else None, "limit": args.limit,
                      "mode": modes.get(name),
                      "options": options[name]} for name in names],
           "mode": mode,
           "options": {k: getattr(args, k) for k in ("segmentation", "window", "stride")
                       if getattr(args, k) is not None},
           "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "retention_threshold": args.retention_threshold, "retention_min_base": args.retention_min_base,
           "device": args.device, "precision": args.precision,
           "samples": args.samples, "temperature": args.temperature, "top_p": args.top_p, "seed": args.sample_seed}
    return validate_eval(raw)


def _pairs(specs: list[str], flag: str, what: str) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        if "=" not in spec:
            raise TunelabError(f"expects {what}, got '{spec}'", field=flag)
        key, value = spec.split("=", 1)
        out.append((key.strip(), value.strip()))
    return out


def _value(text: str) -> Any:
    """An --option value read as a YAML scalar, as a recipe would hold it (64, true, char)."""
    import yaml
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


# Which flag sets which field of the eval configuration (eval.options.KEY is --KEY: --window, --stride…)
_FLAGS = {"tasks": "--tasks", "task": "--tasks", "name": "--tasks", "source": "--data", "limit": "--limit",
          "mode": "--mode", "options": "--option", "batch_size": "--batch-size",
          "max_new_tokens": "--max-new-tokens", "retention_threshold": "--retention-threshold",
          "retention_min_base": "--retention-min-base",
          "device": "--device", "precision": "--precision", "samples": "--samples",
          "temperature": "--temperature", "top_p": "--top-p", "seed": "--sample-seed"}


def _eval_flag(error: TunelabError) -> TunelabError:
    """A configuration error named by the flag that set its field (`eval.tasks.0.mode` -> `--mode`); any
    other error (a data file's, say) as it is."""
    parts = (error.field or "").split(".")
    if parts[0] != "eval" or len(parts) < 2:
        return error
    if parts[1] == "options" and len(parts) > 2:
        flag = "--" + parts[2].replace("_", "-")
    else:
        flag = _FLAGS.get(parts[3] if parts[1] == "tasks" and len(parts) > 3 else parts[1])
    return TunelabError(error.message, file=error.file, line=error.line, field=flag or error.field)


def _fmt(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4f}" if abs(v) <= 1 else f"{v:.2f}"


def _scorer(doc: dict, label: str) -> str:
    """The " (scorer)" after a QA task's F1/EM in the table: which reference script's numbers they are."""
    scorers = {res[label].get("scorer") for res in doc["results"].values()} - {None}
    return f" ({', '.join(sorted(scorers))})" if scorers else ""


def _sampled_columns(table: dict, label: str) -> list[tuple[str, str]]:
    """Beside a sampled task's greedy score: pass@1, pass@k and maj@k (`eval.samples`)."""
    k = next((res[label]["sampled"] for res in table.values() if res[label].get("sampled")), None)
    return [(label, m) for m in ("pass@1", f"pass@{k}", f"maj@{k}")[: 3 if k and k > 1 else 1 if k else 0]
            if any(m in res[label] for res in table.values())]


def print_table(doc: dict) -> None:
    table, best, tasks = doc["results"], doc["best"], doc["tasks"]
    retained = doc.get("retention")
    columns = [(label, t["primary_metric"]) for label, t in tasks.items()]
    columns = [c for label, metric in columns for c in [(label, metric), *_sampled_columns(table, label)]]
    headers = ["model"] + [f"{label}.{metric}{_scorer(doc, label) if metric == tasks[label]['primary_metric'] else ''}"
                           for label, metric in columns]
    if retained:
        headers.append(f"retention (>= {doc['retention_threshold']:.0%} of base f1 and em)")
    print(" | ".join(headers))
    for label, res in table.items():
        cells = [label + (" *best*" if label == best and len(table) > 1 else "")]
        cells += [_fmt(res[label].get(metric, "")) for label, metric in columns]
        if retained:
            from tunelab.runs import verdict  # the one reading of a verdict (an older results.json: only "pass")
            cells.append(verdict(retained[label]))
        print(" | ".join(cells))
    if retained:
        shown = best if len(table) > 1 else next(iter(table))
        print(f"retention of {shown} against the baseline ({doc['baseline']['source']}):")
        from tunelab.eval.retention import describe
        for key, v in retained[shown]["metrics"].items():
            print(f"  {describe(key, v)}")
