"""Run tasks over a model: batched generation, grading, predictions JSONL and a metrics dict per task."""

from __future__ import annotations

from pathlib import Path

from tunelab.data.examples import Example
from tunelab.data.records import write_json, write_jsonl
from tunelab.data.templates import PromptTemplate, load_template
from tunelab.errors import TunelabError
from tunelab.tasks.registry import get_task


def evaluate_examples(model, tokenizer, template: PromptTemplate, task_name: str, examples: list[Example],
                      out_dir: Path, batch_size: int = 32, max_new_tokens: int = 32, desc: str = "",
                      label: str | None = None) -> dict:
    """Generate for every example, grade, write `<label>.predictions.jsonl`; returns the task's metrics."""
    task = get_task(task_name)
    label = label or task_name
    prompts = [template.render(ex.instruction, ex.input) for ex in examples]
    preds = generate_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc or task_name)
    graded, rows = [], []
    for ex, pred in zip(examples, preds):
        g = task.grade(pred, ex)
        graded.append(g)
        rows.append({"id": ex.id, "problem": ex.instruction, "prediction": pred, "reference": ex.output, **g})
    write_jsonl(out_dir / f"{label}.predictions.jsonl", rows)
    return task.summarize(graded)


def generate_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
    from tunelab.eval.engine import generate_batched
    return generate_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            desc=desc)


def template_for(model_dir: str | Path, fallback: PromptTemplate | None = None) -> PromptTemplate:
    """The template saved with the model, else the fallback, else alpaca."""
    return load_template(model_dir) or fallback or PromptTemplate("alpaca")


def evaluate_model_dir(model_dir: str | Path, tasks: dict[str, tuple[str, list[Example]]], out_dir: Path,
                       batch_size: int, max_new_tokens: int, template: PromptTemplate | None = None,
                       label: str = "") -> dict:
    """Load one model (full or adapter, merged for speed) and run every task on it.

    `tasks` maps a result label to (task name, examples); results.json is written last, so its presence
    means the evaluation is complete.
    """
    from tunelab.model.loading import load_for_inference, quiet_transformers
    quiet_transformers()
    model, tokenizer = load_for_inference(str(model_dir), merge=True)
    tmpl = template_for(model_dir, template)
    results = {}
    for name, (task_name, examples) in tasks.items():
        results[name] = evaluate_examples(model, tokenizer, tmpl, task_name, examples, out_dir, batch_size,
                                          max_new_tokens, desc=f"{label} {name}".strip(), label=name)
    write_json(out_dir / "results.json", results)
    return results


def cli_eval(args) -> int:
    """`tunelab eval --model M --tasks a,b --data a=FILE`: a model dir, a checkpoint, or a whole run."""
    from tunelab.train.checkpoints import list_checkpoints, model_dir_of
    files = {}
    for spec in args.data:
        if "=" not in spec:
            raise TunelabError(f"--data expects TASK=FILE, got '{spec}'")
        name, path = spec.split("=", 1)
        files[name.strip()] = path
    tasks: dict[str, list[Example]] = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = get_task(name)
        if name not in files:
            raise TunelabError(f"no data for task '{name}': pass --data {name}=FILE")
        examples = task.load_examples(files[name])
        tasks[name] = (name, examples[: args.limit] if args.limit else examples)
    model = Path(args.model)
    ckpts = list_checkpoints(model)
    targets = [(c.name, model_dir_of(c)) for c in ckpts] if ckpts else [(model.name or str(model), model)]
    # Results go beside the model, in a folder named after the task set, so they never replace the
    # evaluations `tunelab run` keeps in <run>/eval/<checkpoint>/.
    tag = "+".join(tasks)
    out_root = Path(args.out) if args.out else ((model if model.is_dir() else Path(".")) / f"eval-{tag}")
    table = {}
    for label, mdir in targets:
        out = out_root / label if ckpts else out_root
        table[label] = evaluate_model_dir(mdir, tasks, out, args.batch_size, args.max_new_tokens, label=label)
    first = next(iter(tasks))
    primary = get_task(first).primary_metric
    best = max(table, key=lambda k: table[k][first][primary])
    write_json(out_root / "summary.json", {"results": table, "best": best, "best_by": f"{first}.{primary}"})
    _print_table(table, best, list(tasks))
    return 0


def _print_table(table: dict, best: str, task_names: list[str]) -> None:
    headers = ["model"] + [f"{t}.{get_task(t).primary_metric}" for t in task_names]
    print(" | ".join(headers))
    for label, res in table.items():
        cells = [label + (" *best*" if label == best and len(table) > 1 else "")]
        for t in task_names:
            v = res[t][get_task(t).primary_metric]
            cells.append(f"{v:.4f}" if v <= 1 else f"{v:.2f}")
        print(" | ".join(cells))
