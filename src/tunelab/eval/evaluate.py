"""`tunelab eval`: evaluate a model directory, one checkpoint or every checkpoint of a run on a set of tasks.

    tunelab eval --model M --tasks a,b --data a=FILE --data b=FILE [--mode …] [--option TASK.KEY=VALUE …]

The flags are converted, at the command's edge (`tunelab.cli.eval`), into the recipe's `eval:` schema
(`EvalConfig`), and `tunelab.eval.sets` turns that into what is run exactly as for a recipe: the same checks,
the same error for the same mistake (the CLI shows it with the flag that caused it: `--mode: task 'squad' has
no loglik mode …`; a Python caller sees the field, `eval.tasks.0.mode`).

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
from tunelab.eval.retention import load_baseline, overall, retention
from tunelab.eval.runner import evaluate_model_dir
from tunelab.eval.sets import eval_sets
from tunelab.eval.vllm_models import models_for
from tunelab.recipe import EvalConfig
from tunelab.recipe.engine import EngineConfig
from tunelab.records import write_json
from tunelab.runs import best_label, list_checkpoints, model_dir_of
from tunelab.tasks.registry import task_names


def evaluate(model: str | Path, config: EvalConfig, out: str | Path | None = None,
             baseline: str | None = None, *, mindformers_config: str | Path | None = None,
             tokenizer: str | Path | None = None, engine: EngineConfig | None = None) -> tuple[dict, Path]:
    """Evaluate `model` (a run: each of its checkpoints; else any model `tunelab.convert.resolve_model` makes
    loadable: a checkpoint, a model or adapter directory, a GGUF file, a MindFormers .ckpt with its
    `mindformers_config` and `tokenizer`, a hub id) on the configured tasks, the best marked by the first task's
    primary metric; with `baseline` (a base model, or a results JSON) the ability tasks' retention too. Returns
    (results.json's document, the output folder). `engine`: which engine generates (`tunelab.eval.vllm_models`:
    with vLLM one server for every checkpoint, its log in the output folder's vllm.log); default the embedded."""
    sets = eval_sets(config)
    if not sets:
        raise TunelabError("no task to evaluate", field="eval.tasks")
    ability = [label for label, es in sets.items() if es.task.ability]
    if baseline and not ability:
        raise TunelabError(f"a baseline compares ability tasks ({', '.join(task_names(lambda c: c.ability))}); "
                           f"none is among the tasks ({', '.join(sets)})")
    from tunelab.convert.resolve_model import resolve_model
    given, model = str(model), Path(model)
    ckpts = list_checkpoints(model)
    if ckpts:
        targets = [(c.name, model_dir_of(c)) for c in ckpts]
    else:   # one model, by the one rule for its kind
        one = resolve_model(given, mindformers_config=mindformers_config, tokenizer=tokenizer, field="model")
        targets = [(one.label, one.path)]
    # Results go beside the model, in a folder named after the task set, so they never replace the
    # evaluations `tunelab run` keeps in <run>/eval/<checkpoint>/.
    out_root = Path(out) if out else ((model if model.is_dir() else Path(".")) / f"eval-{'+'.join(sets)}")
    (out_root / "results.json").unlink(missing_ok=True)  # a stale file must not pass for this evaluation

    base = load_baseline(baseline, sets, ability, out_root, config.batch_size, config.max_new_tokens,
                         config.device, config.precision) if baseline else None
    table = {}
    # one source for every checkpoint: vLLM's server, or on a GPU one resident base
    models = models_for(engine, out_root, config.device, config.precision)
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
            r = retention(base["results"], res, ability, threshold, config.retention_min_base)
            verdict = overall(r)
            doc["retention"][label] = {"metrics": r, "verdict": verdict,
                                       "pass": {"PASS": True, "FAIL": False}.get(verdict)}
    write_json(out_root / "results.json", doc)
    return doc, out_root
