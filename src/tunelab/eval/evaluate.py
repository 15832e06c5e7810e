"""`tunelab eval`: evaluate a model directory, one checkpoint or every checkpoint of a run on a set of tasks.

    tunelab eval --model M --tasks a,b --data a=FILE --data b=FILE [--mode …] [--option TASK.KEY=VALUE …]

The flags are converted, here at the command's edge, into the recipe's `eval:` schema (`EvalConfig`), and
`tunelab.eval.sets` turns that into what is run exactly as for a recipe: the same checks, the same error
for the same mistake (shown with the flag that caused it: `--mode: task 'squad' has no loglik mode …`).

It writes into its output folder (default `<model>/eval-<tasks>`; a hub id: `./eval-<tasks>`):

    <task>.predictions.jsonl        one row per example (for a run directory: <checkpoint>/<task>…)
    baseline/<task>.predictions…    with --baseline MODEL, the base model's predictions on the ability tasks
    results.json                    everything: per model/checkpoint metrics, best, baseline, retention

results.json is written last, atomically, and any results.json from an earlier evaluation in that folder
is removed first: when it exists, the evaluation it describes is complete. A failing task stops the
evaluation with one error line and leaves no results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.eval.retention import load_baseline, retention
from tunelab.eval.runner import evaluate_model_dir
from tunelab.eval.sets import eval_sets
from tunelab.model.resident import model_source
from tunelab.recipe import EvalConfig, validate_eval
from tunelab.records import write_json
from tunelab.runs import best_label, list_checkpoints, model_dir_of
from tunelab.tasks.registry import get_task, task_names


def evaluate(model: str | Path, config: EvalConfig, out: str | Path | None = None,
             baseline: str | None = None) -> tuple[dict, Path]:
    """Evaluate `model` (a model or adapter directory, a hub id, a checkpoint, or a run: each of its
    checkpoints) on the configured tasks, the best marked by the first task's primary metric; with `baseline`
    (a base model, or a results JSON) the ability tasks' retention too. Returns (results.json's document,
    the output folder)."""
    sets = eval_sets(config)
    if not sets:
        raise TunelabError("no task to evaluate", field="eval.tasks")
    ability = [label for label, es in sets.items() if es.task.ability]
    if baseline and not ability:
        raise TunelabError(f"a baseline compares ability tasks ({', '.join(task_names(lambda c: c.ability))}); "
                           f"none is among the tasks ({', '.join(sets)})")
    given, model = str(model), Path(model)
    ckpts = list_checkpoints(model)
    if ckpts:
        targets = [(c.name, model_dir_of(c)) for c in ckpts]
    elif (model / "state.json").is_file():   # one checkpoint of a run: its model (or adapter) directory
        targets = [(model.name, model_dir_of(model))]
    else:
        targets = [(model.name or str(model), model)]
    # Results go beside the model, in a folder named after the task set, so they never replace the
    # evaluations `tunelab run` keeps in <run>/eval/<checkpoint>/.
    out_root = Path(out) if out else ((model if model.is_dir() else Path(".")) / f"eval-{'+'.join(sets)}")
    (out_root / "results.json").unlink(missing_ok=True)  # a stale file must not pass for this evaluation

    base = load_baseline(baseline, sets, ability, out_root, config.batch_size, config.max_new_tokens,
                         config.device, config.precision) if baseline else None
    table = {}
    models = model_source(config.device, config.precision)  # on a GPU, one base for every checkpoint
    try:
        for label, mdir in targets:
            table[label] = evaluate_model_dir(mdir, sets, out_root / label if ckpts else out_root,
                                              config.batch_size, config.max_new_tokens, label=label,
                                              write_results=False, models=models)
    finally:
        models.close()
    first = next(iter(sets))
    doc: dict[str, Any] = {
        "model": given,
        "tasks": {label: {"task": es.task.name, "mode": es.mode, "data": es.source, "n": len(es.examples),
                          "primary_metric": es.task.primary_metric, "higher_is_better": es.task.higher_is_better}
                  for label, es in sets.items()},
        "results": table, "best": best_label(table, first, sets[first].task),
        "best_by": f"{first}.{sets[first].task.primary_metric}",
    }
    if base:
        threshold = config.retention_threshold
        doc.update({"baseline": base, "retention_threshold": threshold, "retention": {}})
        for label, res in table.items():
            r = retention(base["results"], res, ability, threshold)
            doc["retention"][label] = {"metrics": r, "pass": all(v["pass"] for v in r.values())}
    write_json(out_root / "results.json", doc)
    return doc, out_root


# --- the command's edge: flags -> EvalConfig -------------------------------------------------------

def config_from_flags(args) -> EvalConfig:
    """`tunelab eval`'s flags as the recipe's eval section. Only the flags' own syntax is checked here;
    everything else is checked by the schema and `eval_sets`, as for a recipe."""
    names = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not names:
        raise TunelabError("no task given", field="--tasks")
    for name in names:  # a misspelt task is named as such, not as a task without --data
        try:
            get_task(name)
        except TunelabError as e:
            raise TunelabError(e.message, field="--tasks") from None
    files = dict(_pairs(args.data, "--data", "TASK=FILE"))
    for name in files:
        if name not in names:
            raise TunelabError(f"'{name}' is not among --tasks ({', '.join(names)})", field="--data")
    for name in names:
        if name not in files:
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
    raw = {"tasks": [{"task": name, "source": {"path": files[name]}, "limit": args.limit, "mode": modes.get(name),
                      "options": options[name]} for name in names],
           "mode": mode,
           "options": {k: getattr(args, k) for k in ("segmentation", "window", "stride")
                       if getattr(args, k) is not None},
           "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
           "retention_threshold": args.retention_threshold, "device": args.device, "precision": args.precision}
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
          "device": "--device", "precision": "--precision"}


def _as_flag(error: TunelabError) -> TunelabError:
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


def cli_eval(args) -> int:
    try:
        doc, out_root = evaluate(args.model, config_from_flags(args), args.out, args.baseline)
    except TunelabError as e:
        raise _as_flag(e) from None
    _print_table(doc)
    print(f"results: {out_root / 'results.json'}")
    return 0


def _fmt(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4f}" if abs(v) <= 1 else f"{v:.2f}"


def _scorer(doc: dict, label: str) -> str:
    """The " (scorer)" after a QA task's F1/EM in the table: which reference script's numbers they are."""
    scorers = {res[label].get("scorer") for res in doc["results"].values()} - {None}
    return f" ({', '.join(sorted(scorers))})" if scorers else ""


def _print_table(doc: dict) -> None:
    table, best, tasks = doc["results"], doc["best"], doc["tasks"]
    retained = doc.get("retention")
    headers = ["model"] + [f"{label}.{t['primary_metric']}{_scorer(doc, label)}" for label, t in tasks.items()]
    if retained:
        headers.append(f"retention (>= {doc['retention_threshold']:.0%} of base f1 and em)")
    print(" | ".join(headers))
    for label, res in table.items():
        cells = [label + (" *best*" if label == best and len(table) > 1 else "")]
        cells += [_fmt(res[t][info["primary_metric"]]) for t, info in tasks.items()]
        if retained:
            cells.append("PASS" if retained[label]["pass"] else "FAIL")
        print(" | ".join(cells))
    if retained:
        shown = best if len(table) > 1 else next(iter(table))
        print(f"retention of {shown} against the baseline ({doc['baseline']['source']}):")
        for key, v in retained[shown]["metrics"].items():
            scorer = f" ({v['scorer']} scorer)" if v.get("scorer") else ""
            print(f"  {key}{scorer}: {v['retained']:.1%} ({v['tuned']:.2f} vs base {v['base']:.2f}) "
                  f"{'PASS' if v['pass'] else 'FAIL'}")
