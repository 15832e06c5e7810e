"""What every run report has in common, whatever the run kind: the frame of report.md (title, description,
summary) and the pieces each kind's sections are built from — table cells, percentages, the "Every checkpoint"
table. Each run kind writes its own sections (`tunelab.pipeline.competition`, `.pretraining`, `.course`);
`tunelab handin` shows checkpoints with the same cells.

Everything here is derived from metrics.json's content, never the other way round."""

from __future__ import annotations

from tunelab.recipe import Recipe


def render_report(recipe: Recipe, summary: list[str], sections: list[str]) -> str:
    """report.md: the run's name and description, its summary lines as a list, then the kind's sections."""
    lines = [f"# Run report: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += ["## Summary", ""] + [f"- {x}" for x in summary] + [""]
    return "\n".join(lines + sections)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def number(value, fmt: str) -> str:
    """`value` formatted, or – when it was not measured."""
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def table_cell(text: str, limit: int = 160) -> str:
    """A table cell: newlines shown as ⏎, pipes escaped, long text cut."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ") or "–"


def checkpoint_cell(r: dict) -> str:
    """One task's headline in the per-checkpoint table; a sampled task's (`eval.samples`) greedy score is
    followed by pass@1, pass@k and maj@k: the headroom beside what the first answer scores."""
    k = r.get("sampled")
    if k:
        extra = [m for m in ("pass@1", f"pass@{k}", f"maj@{k}") if m in r][: 3 if k > 1 else 1]
        return " · ".join([_headline(r), *(f"{m} {pct(r[m])}" for m in extra)])
    return _headline(r)


def _headline(r: dict) -> str:
    if "accuracy" in r and r["accuracy"] <= 1:
        return pct(r["accuracy"])
    if "f1" in r and "exact_match" in r:
        return f"F1 {r['f1']:.1f} / EM {r['exact_match']:.1f}" + (f" ({r['scorer']})" if r.get("scorer") else "")
    metric = r.get("primary_metric")
    if metric in r and metric.endswith("_acc") and r[metric] <= 1:  # instructions' prompt-level accuracy
        return f"{metric} {pct(r[metric])}"
    if metric in r:
        return f"{metric} {r[metric]:.2f}"
    return "–"


def checkpoint_table(measures: list[str], labels: list[str], rows: list[tuple[list[str], list[str]]]) -> list[str]:
    """The report's "Every checkpoint" section: a row per checkpoint, with its title and the cells of the
    `measures` the run kind adds (the validation loss, the held-out answer loss) first, then one cell per eval
    task label."""
    lines = ["## Every checkpoint", "", "| " + " | ".join(["checkpoint", *measures]) + " | " + " | ".join(labels)
             + " |", "|---|" + "---|" * (len(measures) + len(labels))]
    lines += ["| " + " | ".join(lead) + " | " + " | ".join(cells) + " |" for lead, cells in rows]
    return lines + [""]


def best_title(name: str, best: str | None) -> str:
    """A checkpoint's name in a table, marked when it is the best."""
    return name + (" (best)" if name == best else "")


def results_with(results: dict, key: str) -> dict[str, dict]:
    """The task results (by label) that carry `key`: unigram_perplexity -> ppl on a corpus, samples ->
    continuation, stop_rate -> rougel on question-answer pairs."""
    return {label: r for label, r in results.items() if isinstance(r, dict) and key in r}
