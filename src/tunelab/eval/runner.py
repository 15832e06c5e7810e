"""Run tasks over a model: batched generation, log-likelihood or perplexity scoring, grading, a predictions
JSONL per task and a metrics dict per task; `tunelab eval` on top.

`tunelab eval --model M --tasks a,b --data a=FILE …` writes into its output folder (default
`<model>/eval-<tasks>`; a hub id: `./eval-<tasks>`):

    <task>.predictions.jsonl        one row per example (for a run directory: <checkpoint>/<task>…)
    baseline/<task>.predictions…    with --baseline MODEL, the base model's predictions on the ability tasks
    results.json                    everything: per model/checkpoint metrics, best, baseline, retention

results.json is written last, atomically, and any results.json from an earlier evaluation in that folder
is removed first: when it exists, the evaluation it describes is complete. A failing task stops the
evaluation with one error line and leaves no results.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.records import read_json, write_json, write_jsonl
from tunelab.data.templates import PromptTemplate, load_template
from tunelab.errors import TunelabError
from tunelab.tasks.registry import Task, get_task


@dataclass
class EvalSet:
    """One evaluation entry: a (configured) task, its examples, the mode to run, and where the data came from."""

    task: Task
    examples: list[Example]
    mode: str | None = None  # None: the task's default mode
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def as_eval_set(value: EvalSet | tuple) -> EvalSet:
    """An EvalSet from an EvalSet or a (task name or Task, examples[, mode]) tuple."""
    if isinstance(value, EvalSet):
        return value
    task, examples, *rest = value
    return EvalSet(get_task(task) if isinstance(task, str) else task, examples, rest[0] if rest else None)


def evaluate_examples(model, tokenizer, template: PromptTemplate, task: str | Task, examples: list[Example],
                      out_dir: Path, batch_size: int = 32, max_new_tokens: int = 32, desc: str = "",
                      label: str | None = None, mode: str | None = None) -> dict:
    """Run one task in its mode, grade, write `<label>.predictions.jsonl`; returns the task's metrics
    (plus `mode` and `primary_metric`)."""
    task = get_task(task) if isinstance(task, str) else task
    label = label or task.name
    mode = task.resolve_mode(mode)
    desc = desc or label
    if mode == "generate":
        graded, rows = _run_generate(model, tokenizer, template, task, examples, batch_size, max_new_tokens, desc)
    elif mode == "loglik":
        graded, rows = _run_loglik(model, tokenizer, template, task, examples, batch_size, desc)
    elif mode == "perplexity":
        graded, rows = _run_perplexity(model, tokenizer, task, examples, batch_size, desc)
    else:
        raise TunelabError(f"unknown mode '{mode}' (choose from generate, loglik)", field="mode")
    summary = task.summarize(graded)
    write_jsonl(out_dir / f"{label}.predictions.jsonl", rows)
    return {**summary, "mode": mode, "primary_metric": task.primary_metric}


def _run_generate(model, tokenizer, template, task, examples, batch_size, max_new_tokens, desc):
    prompts = [task.prompt(ex, template) for ex in examples]
    max_new_tokens = getattr(task, "max_new_tokens", None) or max_new_tokens  # a task's own length wins
    preds = generate_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
    graded, rows = [], []
    for ex, pred in zip(examples, preds):
        g = task.grade(pred, ex)
        graded.append(g)
        rows.append({"id": ex.id, "problem": ex.instruction, "prediction": pred, "reference": ex.output, **g})
    return graded, rows


def _run_loglik(model, tokenizer, template, task, examples, batch_size, desc):
    from tunelab.eval.loglik import loglikelihood
    per_example = [task.loglik_requests(ex, task.prompt(ex, template)) for ex in examples]
    flat = [req for reqs in per_example for req in reqs]
    scores = loglikelihood(model, tokenizer, flat, batch_size=batch_size, progress=True, desc=desc)
    graded, rows, pos = [], [], 0
    for ex, reqs in zip(examples, per_example):
        results = scores[pos: pos + len(reqs)]
        pos += len(reqs)
        g = task.grade_loglik(results, ex)
        graded.append(g)
        best = max(range(len(reqs)), key=lambda i: results[i].logprob)
        rows.append({"id": ex.id, "problem": ex.instruction, "prediction": reqs[best][1],
                     "reference": ex.output, "continuations": [c for _, c in reqs], **g})
    return graded, rows


def _run_perplexity(model, tokenizer, task, examples, batch_size, desc):
    from tunelab.eval.perplexity import score_token_ids
    ids = task.token_ids(examples, tokenizer)
    scores, window, stride = score_token_ids(
        model, tokenizer, ids, window=task.window, stride=task.stride, batch_size=batch_size,
        max_batch_tokens=int(task.max_batch_tokens), progress=True, desc=desc)
    task.window, task.stride = window, stride  # recorded by summarize
    graded, rows = [], []
    for ex, score, seq in zip(examples, scores, ids):
        g = task.grade_perplexity(score, ex, seq)
        graded.append(g)
        text = task.document(ex)
        rows.append({"id": ex.id, "where": ex.kind, "text": text[:200] + ("…" if len(text) > 200 else ""), **g})
    return graded, rows


def generate_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
    from tunelab.model.decoding import generate_batched
    return generate_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            desc=desc)


def template_for(model_dir: str | Path, fallback: PromptTemplate | None = None) -> PromptTemplate:
    """The template saved with the model, else the fallback, else alpaca."""
    return load_template(model_dir) or fallback or PromptTemplate("alpaca")


def evaluate_model_dir(model_dir: str | Path, tasks: dict[str, EvalSet | tuple], out_dir: Path,
                       batch_size: int, max_new_tokens: int, template: PromptTemplate | None = None,
                       label: str = "", write_results: bool = True) -> dict:
    """Load one model (full or adapter, merged for speed) and run every task on it.

    `tasks` maps a result label to an EvalSet (or a (task, examples[, mode]) tuple). With `write_results`,
    `out_dir/results.json` is removed first and written last, so its presence means the evaluation is
    complete.
    """
    from tunelab.model.loading import load_for_inference, quiet_transformers
    sets = {name: as_eval_set(v) for name, v in tasks.items()}
    if write_results:
        (Path(out_dir) / "results.json").unlink(missing_ok=True)
    quiet_transformers()
    model, tokenizer = load_for_inference(str(model_dir), merge=True)
    tmpl = template_for(model_dir, template)
    results = {}
    for name, es in sets.items():
        results[name] = evaluate_examples(model, tokenizer, tmpl, es.task, es.examples, out_dir, batch_size,
                                          max_new_tokens, desc=f"{label} {name}".strip(), label=name,
                                          mode=es.mode)
    if write_results:
        write_json(Path(out_dir) / "results.json", results)
    return results


# --- `tunelab eval` ------------------------------------------------------------------------------

def _pairs(specs: list[str], flag: str, what: str) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        if "=" not in spec:
            raise TunelabError(f"{flag} expects {what}, got '{spec}'")
        key, value = spec.split("=", 1)
        out.append((key.strip(), value.strip()))
    return out


def _configure(tasks: dict[str, Task], args) -> None:
    """Apply --segmentation / --window / --stride (to the tasks that have the setting) and --option."""
    import yaml
    for flag in ("segmentation", "window", "stride"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        users = [t for t in tasks.values() if flag in t.settings]
        if not users:
            raise TunelabError(f"--{flag} applies to none of the tasks "
                               f"({', '.join(tasks)}); it is a setting of "
                               + ", ".join(sorted(n for n, t in _all_tasks().items() if flag in t.settings)))
        for t in users:
            t.configure(**{flag: value})
    for key, value in _pairs(getattr(args, "options", None) or [], "--option", "TASK.KEY=VALUE"):
        name, _, setting = key.partition(".")
        if name not in tasks or not setting:
            raise TunelabError(f"--option {key}: expected TASK.KEY with TASK one of {', '.join(tasks)}")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        tasks[name].configure(**{setting: parsed})


def _all_tasks() -> dict[str, type[Task]]:
    import tunelab.tasks  # noqa: F401
    from tunelab.tasks.registry import TASKS
    return TASKS


def prepare_sets(args) -> dict[str, EvalSet]:
    """Validate --tasks/--data/--mode/settings and load every task's examples (before any model work)."""
    names = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    if not names:
        raise TunelabError("--tasks names no task")
    tasks = {name: get_task(name) for name in names}  # an unknown name fails here, in one line
    files = dict(_pairs(args.data, "--data", "TASK=FILE"))
    for name in files:
        if name not in tasks:
            raise TunelabError(f"--data {name}=…: '{name}' is not among --tasks ({', '.join(names)})")
    for name in names:
        if name not in files:
            raise TunelabError(f"no data for task '{name}': pass --data {name}=FILE")
    _configure(tasks, args)
    modes = _modes(getattr(args, "mode", None) or "generate", tasks)
    sets = {}
    for name, task in tasks.items():
        requested = modes.get(name, "generate")
        mode = task.resolve_mode(requested)
        if mode != requested and requested != "generate":
            if name in modes and "=" in args.mode:  # asked for this task by name: a mistake
                raise TunelabError(f"task '{name}' has no {requested} mode (modes: {', '.join(task.modes)})",
                                   field="mode")
            print(f"tunelab: note: task '{name}' has no {requested} mode; it runs in {mode} mode",
                  file=sys.stderr)
        examples = task.load_examples(files[name])
        if args.limit:
            examples = examples[: args.limit]
        sets[name] = EvalSet(task, examples, mode, source=files[name])
    return sets


def _modes(spec: str, tasks: dict[str, Task]) -> dict[str, str]:
    """--mode: one mode for every task ("loglik"), or per task ("choice=loglik,cola=generate")."""
    known = ("generate", "loglik")
    if "=" not in spec:
        if spec not in known:
            raise TunelabError(f"unknown mode '{spec}' (choose from {', '.join(known)}, or TASK=MODE,…)",
                               field="mode")
        return {name: spec for name in tasks}
    modes = {}
    for name, mode in _pairs([x for x in spec.split(",") if x.strip()], "--mode", "TASK=MODE"):
        if name not in tasks:
            raise TunelabError(f"--mode {name}=…: '{name}' is not among --tasks ({', '.join(tasks)})")
        if mode not in known:
            raise TunelabError(f"unknown mode '{mode}' for task '{name}' (choose from {', '.join(known)})",
                               field="mode")
        modes[name] = mode
    return modes


def load_baseline(spec: str, sets: dict[str, EvalSet], ability: list[str], out_root: Path, args) -> dict:
    """Base-model metrics for the ability tasks: from a results JSON (tunelab eval's results.json, or a run's
    eval/base/results.json), else by evaluating the base model on those tasks."""
    path = Path(spec)
    if path.is_file():
        _, doc = read_json(path)
        if not isinstance(doc, dict):
            raise TunelabError("expected a results JSON object", file=path)
        results = doc
        if isinstance(doc.get("results"), dict):  # tunelab eval's results.json
            per_model = doc["results"]
            chosen = doc.get("best") if doc.get("best") in per_model else (
                next(iter(per_model)) if len(per_model) == 1 else None)
            if chosen is None:
                raise TunelabError("several models in the results and no 'best' to pick", file=path,
                                   field="best")
            results = per_model[chosen]
        for label in ability:
            metrics = results.get(label)
            if not isinstance(metrics, dict) or not all(
                    isinstance(metrics.get(k), (int, float)) for k in ("f1", "exact_match")):
                raise TunelabError(f"no f1/exact_match for task '{label}' in the baseline results", file=path,
                                   field=label)
        return {"source": str(path), "kind": "results", "results": {k: results[k] for k in ability}}
    base_sets = {label: sets[label] for label in ability}
    results = evaluate_model_dir(spec, base_sets, out_root / "baseline", args.batch_size, args.max_new_tokens,
                                 label="baseline", write_results=False)
    return {"source": spec, "kind": "model", "results": results}


def cli_eval(args) -> int:
    """`tunelab eval --model M --tasks a,b --data a=FILE`: a model dir, a checkpoint, or a whole run."""
    from tunelab.pipeline import retention
    from tunelab.runs import best_label, list_checkpoints, model_dir_of
    sets = prepare_sets(args)
    ability = [label for label, es in sets.items() if es.task.ability]
    baseline_spec = getattr(args, "baseline", None)
    threshold = getattr(args, "retention_threshold", 0.9)
    if baseline_spec and not ability:
        raise TunelabError("--baseline compares ability tasks (" + ", ".join(
            sorted(n for n, t in _all_tasks().items() if t.ability)) + f"); none is among --tasks {args.tasks}")
    model = Path(args.model)
    ckpts = list_checkpoints(model)
    if ckpts:
        targets = [(c.name, model_dir_of(c)) for c in ckpts]
    elif (model / "state.json").is_file():   # one checkpoint of a run: its model (or adapter) directory
        targets = [(model.name, model_dir_of(model))]
    else:
        targets = [(model.name or str(model), model)]
    # Results go beside the model, in a folder named after the task set, so they never replace the
    # evaluations `tunelab run` keeps in <run>/eval/<checkpoint>/.
    tag = "+".join(sets)
    out_root = Path(args.out) if args.out else ((model if model.is_dir() else Path(".")) / f"eval-{tag}")
    (out_root / "results.json").unlink(missing_ok=True)  # a stale file must not pass for this evaluation

    baseline = load_baseline(baseline_spec, sets, ability, out_root, args) if baseline_spec else None
    table = {}
    for label, mdir in targets:
        out = out_root / label if ckpts else out_root
        table[label] = evaluate_model_dir(mdir, sets, out, args.batch_size, args.max_new_tokens, label=label,
                                          write_results=False)
    first = next(iter(sets))
    best = best_label(table, first, sets[first].task)
    doc: dict[str, Any] = {
        "model": str(args.model),
        "tasks": {label: {"task": es.task.name, "mode": es.task.resolve_mode(es.mode), "data": es.source,
                          "n": len(es.examples), "primary_metric": es.task.primary_metric,
                          "higher_is_better": es.task.higher_is_better} for label, es in sets.items()},
        "results": table, "best": best, "best_by": f"{first}.{sets[first].task.primary_metric}",
    }
    if baseline:
        doc["baseline"] = baseline
        doc["retention_threshold"] = threshold
        doc["retention"] = {}
        for label, res in table.items():
            r = retention(baseline["results"], res, ability, threshold)
            doc["retention"][label] = {"metrics": r, "pass": all(v["pass"] for v in r.values())}
    write_json(out_root / "results.json", doc)
    _print_table(doc, sets)
    print(f"results: {out_root / 'results.json'}")
    return 0


def _fmt(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4f}" if abs(v) <= 1 else f"{v:.2f}"


def _print_table(doc: dict, sets: dict[str, EvalSet]) -> None:
    table, best = doc["results"], doc["best"]
    retention = doc.get("retention")
    headers = ["model"] + [f"{label}.{es.task.primary_metric}" for label, es in sets.items()]
    if retention:
        headers.append(f"retention (>= {doc['retention_threshold']:.0%} of base f1 and em)")
    print(" | ".join(headers))
    for label, res in table.items():
        cells = [label + (" *best*" if label == best and len(table) > 1 else "")]
        cells += [_fmt(res[t][es.task.primary_metric]) for t, es in sets.items()]
        if retention:
            cells.append("PASS" if retention[label]["pass"] else "FAIL")
        print(" | ".join(cells))
    if retention:
        shown = best if len(table) > 1 else next(iter(table))
        print(f"retention of {shown} against the baseline ({doc['baseline']['source']}):")
        for key, v in retention[shown]["metrics"].items():
            print(f"  {key}: {v['retained']:.1%} ({v['tuned']:.2f} vs base {v['base']:.2f}) "
                  f"{'PASS' if v['pass'] else 'FAIL'}")
