"""Retention of original abilities: each ability metric of a tuned model as a fraction of its base model's, PASS
at a threshold (the competition asks for 90 %). Which metrics: each task's own headline ones
(`Task.retention_metrics`, recorded in its results as `retained_by`): F1 and exact match for reading and SQuAD,
the strict prompt- and instruction-level accuracies for `instructions`, the accuracy for `knowledge`, the
agreement for `base_agreement`. Results without `retained_by` (written before it existed) are F1 and EM.

Which F1/EM: the ones of the scorer the task was configured with (the squad task's setting `scorer`:
`official`, `cmrc`, `mindformers` or the per-language `auto`), which its results name (`scorer`). The
competition's organisers compute theirs with MindFormers' EmF1Metric, so the competition recipe sets
`scorer: mindformers`. Base and tuned numbers of different scorers are never compared: that is an error.

`tunelab run` compares the best checkpoint with the recipe's base model; `tunelab eval --baseline` with a base
model it evaluates the same way, or with the numbers of an earlier evaluation (`load_baseline`): its results
must name the same scorer, or none (numbers typed in from a published table, taken as that scorer's).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.eval.runner import evaluate_model_dir
from tunelab.eval.sets import EvalSet
from tunelab.records import read_json
from tunelab.runs import CANNOT_JUDGE, overall, verdict  # how an entry reads: in the foundation, for export too

__all__ = ["CANNOT_JUDGE", "describe", "load_baseline", "overall", "retained_by", "retention", "verdict"]


def retention(base: dict, tuned: dict, ability_tasks: list[str], threshold: float, min_base: float = 5.0) -> dict:
    """Each ability metric (F1 and EM) as a fraction of the base model's, with PASS/FAIL at `threshold`, and
    the scorer that computed both (None for a task whose results do not name one).

    A base below `min_base` (on the metrics' 0-100 scale) is too close to zero to judge against: a ratio over it
    is noise or a division by zero, never a PASS. Its entry has `retained` and `pass` None and says why
    (`verdict`) — a chat model asked in a format it never saw scores ~0 on exact match, and 100 % of 0 means
    nothing."""
    out = {}
    for task in ability_tasks:
        scorer = _same_scorer(task, base[task].get("scorer"), tuned[task].get("scorer"))
        for metric, scale in retained_by(tuned[task]).items():
            b, t = base[task].get(metric), tuned[task].get(metric)
            if b is None or t is None:
                continue
            b, t = b * scale, t * scale   # on 0-100, where `min_base` is
            key = f"{task}.{metric}"
            if b < min_base or b <= 0:  # nothing is ever judged against a zero
                out[key] = {"base": b, "tuned": t, "retained": None, "pass": None, "scorer": scorer,
                            "verdict": f"{CANNOT_JUDGE}: the base scores {b:.2f} on {key}"
                                       + (f" (below {min_base:g})" if b < min_base else "")}
                continue
            ratio = t / b
            out[key] = {"base": b, "tuned": t, "retained": ratio, "pass": ratio >= threshold, "scorer": scorer}
    return out


def retained_by(results: dict) -> dict[str, float]:
    """{metric: factor to 0-100} a task's results are judged by; F1/EM for results that do not say."""
    return results.get("retained_by") or {"f1": 1.0, "exact_match": 1.0}


def describe(key: str, entry: dict, of: str = "base") -> str:
    """`reading.f1 (official scorer): 97.3 % (80.10 vs base 82.30) PASS`, or the cannot-judge line."""
    scorer = f" ({entry['scorer']} scorer)" if entry.get("scorer") else ""
    if entry.get("retained") is None:
        return f"{key}{scorer}: {verdict(entry)} ({entry['tuned']:.2f} vs {of} {entry['base']:.2f})"
    return (f"{key}{scorer}: {100 * entry['retained']:.1f}% ({entry['tuned']:.2f} vs {of} {entry['base']:.2f}) "
            f"{verdict(entry)}")


def _same_scorer(task: str, base: str | None, tuned: str | None, file: Path | None = None) -> str | None:
    """The scorer of a comparison. Baseline numbers that name no scorer (typed in from a published table) are
    taken as the evaluated model's scorer's; numbers of two different scorers are an error."""
    if base is not None and base != tuned:
        raise TunelabError(f"task '{task}': the baseline's F1/EM come from the {base} scorer, the evaluated "
                           f"model's from {tuned or 'another'}; retention compares one scorer's numbers (set the "
                           "same scorer, or re-evaluate the baseline)", file=file, field=task)
    return tuned


def load_baseline(spec: str, sets: dict[str, EvalSet], ability: list[str], out_root: Path, batch_size: int,
                  max_new_tokens: int, device: str | None = None, precision: str = "auto") -> dict:
    """Base-model metrics for the ability tasks: from a results JSON (tunelab eval's results.json, or a run's
    eval/base/results.json), else by evaluating the base model `spec` on those tasks."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() not in (".gguf", ".ckpt"):   # a model file is a model
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
            wanted = sets[label].task.retention_metrics
            if not isinstance(metrics, dict) or not all(isinstance(metrics.get(k), (int, float)) for k in wanted):
                raise TunelabError(f"no {'/'.join(wanted)} for task '{label}' in the baseline results", file=path,
                                   field=label)
            # squad results written before the `scorer` setting existed hold auto's f1/em beside mindformers_f1
            recorded = metrics.get("scorer") or ("auto" if "mindformers_f1" in metrics else None)
            _same_scorer(label, recorded, getattr(sets[label].task, "scorer", None), path)
        return {"source": str(path), "kind": "results", "results": {k: results[k] for k in ability}}
    from tunelab.convert.resolve_model import resolve_model   # a run, a checkpoint, a GGUF file, a hub id, …
    base = resolve_model(spec, field="baseline").path
    results = evaluate_model_dir(base, {label: sets[label] for label in ability}, out_root / "baseline",
                                 batch_size, max_new_tokens, label="baseline", write_results=False,
                                 device=device, precision=precision)
    return {"source": spec, "kind": "model", "results": results}
