"""One naming scheme for what every tracker gets, from the records tunelab already writes: a metrics.jsonl line
(`step_metrics`), one checkpoint's evaluation (`checkpoint_metrics`), a run's outcome (`outcome_metrics`) and the
resolved recipe with the environment (`flat_params`). Slash-separated groups, so each dashboard sorts them into
panels: `train/`, `val/`, `eval/<task>/`, `retention/`, `score/`."""

from __future__ import annotations

from typing import Any

# metrics.jsonl keys -> tracked names (step and wall time are the x axes, not metrics)
_STEP_KEYS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "epoch": "train/epoch",
              "tokens_per_s": "train/tokens_per_s", "sample_tokens_per_s": "train/sample_tokens_per_s",
              "mfu": "train/mfu", "memory_gib": "train/memory_gib", "val_loss": "val/loss",
              "val_perplexity": "val/perplexity",
              # a preference run (`train.method: dpo`): TRL's names, under train/
              **{k: f"train/{k}" for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                           "rewards/margins", "logps/chosen", "logps/rejected")}}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def step_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A training or validation line of metrics.jsonl, under tracked names."""
    return {name: float(record[key]) for key, name in _STEP_KEYS.items() if is_number(record.get(key))}


def checkpoint_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One checkpoint's evaluation ({task label: its metrics}): every number a task reports, by kind too
    (`eval/arithmetic/accuracy`, `eval/reading/by_kind/reading-zh/f1`)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif is_number(value):
            out[prefix] = float(value)
    for label, metrics in results.items():
        walk(f"eval/{label}", {k: v for k, v in metrics.items() if k not in ("mode", "primary_metric")})
    return out


def outcome_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A competition run's outcome from its metrics.json: retention ratios and verdicts (1 pass, 0 fail), the
    low-parameter ratio and the score (logged at the best checkpoint's step)."""
    out: dict[str, float] = {}
    for name, r in (metrics.get("retention") or {}).items():
        if r.get("retained") is None:  # a base too close to zero: nothing judged, nothing to plot
            continue
        out[f"retention/{name}/retained"] = float(r["retained"])
        out[f"retention/{name}/pass"] = float(bool(r["pass"]))
    if metrics.get("ratio"):
        out["score/low_param_ratio"] = float(metrics["ratio"]["ratio"])
    if metrics.get("score"):
        out["score/accuracy"] = float(metrics["score"]["accuracy"])
        out["score/value"] = float(metrics["score"]["value"])
    return out


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe (or environment) as dotted keys with scalar values, as every tracker's hyperparameter
    table takes them: lists become their comma-joined text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = value
    return out
