"""What a sweep leaves beside its trials: `trials.csv` and the table printed (one row per trial: its values, what
became of it, its objective, score, ratio and retention), `best.yaml` (the sweep's recipe with the best feasible
trial's values: `tunelab run best.yaml` reproduces that trial as a run of its own), and PNGs — Optuna's
optimisation history, each trial's value per checkpoint (where pruned trials stopped) and parameter importances,
and score against low-parameter ratio with the Pareto front (`tunelab runs table --png` over the trials' runs).
Everything is read from the study, so the same files come out of any worker, after a resume, or for a sweep
another machine ran.
"""

from __future__ import annotations

import copy
import csv
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.compare import display_width
from tunelab.recipe import set_field
from tunelab.sweep.space import Space, decode_choice
from tunelab.sweep.study import DIED, ERROR_ATTR, RUN_ATTR, STOPS_ATTR

log = logging.getLogger(__name__)


@dataclass
class SweepResults:
    """The study read back: table rows, the best feasible trial (None before one completes), the baseline
    trial (the recipe's own values, when the space holds them) and the files written."""

    columns: list[str]
    rows: list[list[Any]]
    best: Any = None
    baseline: Any = None
    files: list[Path] = field(default_factory=list)


def read_results(study, space: Space) -> SweepResults:
    """One row per trial (`attempts`: a trial Optuna's heartbeat retried under a new number is one trial, shown
    under its first number, as its run folder is), with what became of it and, in the note, why it stopped."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    params = [d.field for d in space.dimensions]
    objective = study.user_attrs.get("objective", "value")
    outcome = ["ratio", "retention", "best"] if objective == "score" else ["score", "ratio", "retention", "best"]
    columns = ["trial", "run", "state", *params, objective, *outcome, "note"]
    rows = []
    for tries in attempts(trials):
        t = tries[-1]  # the latest attempt says where the trial is now
        a = t.user_attrs
        found = {"score": a.get("score"), "ratio": a.get("ratio"), "retention": a.get("retention"),
                 "best": a.get("best_checkpoint")}
        rows.append([tries[0].number, a.get(RUN_ATTR, ""), _state(t), *[t.params.get(p, "") for p in params],
                     t.value, *[found[k] for k in outcome], _note(tries)])
    best = None
    try:
        best = study.best_trial  # Optuna's: the best feasible COMPLETE trial (constraints are respected)
    except ValueError:
        pass
    baseline = next((t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE), None)
    return SweepResults(columns, rows, best, baseline)


def attempts(trials: list) -> list[list]:
    """The study's trials grouped by the run they wrote (`run`), in the order of their first number: a trial
    retried by Optuna's heartbeat under another number continues its run and is the same trial."""
    groups: dict[Any, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        groups.setdefault(t.user_attrs.get(RUN_ATTR) or ("number", t.number), []).append(t)
    return list(groups.values())


def _state(t) -> str:
    from optuna.trial import TrialState
    if t.state == TrialState.COMPLETE and any(v > 0 for v in t.constraints.values()):
        return "infeasible"  # finished, but lost too much of a retained ability: it cannot win
    if t.state == TrialState.WAITING and t.user_attrs.get(STOPS_ATTR):
        return "stopped"  # requeued: the next sweep resumes its run
    return t.state.name.lower()


def _note(tries: list) -> str:
    """Why the trial stopped: its error, where it was pruned, and each interruption it was resumed after."""
    from optuna.trial import TrialState
    t = tries[-1]
    a = t.user_attrs
    stops = [*a.get(STOPS_ATTR, []), *[DIED] * (len(tries) - 1)]  # each earlier attempt's process died
    parts = [a.get(ERROR_ATTR) or (f"pruned at {a['pruned_at']}" if "pruned_at" in a else "")]
    if t.state == TrialState.WAITING and stops:
        parts.append(f"{stops[-1]}; resumes when the sweep runs again")
        stops = stops[:-1]
    if stops:
        parts.append("resumed after: " + "; ".join(stops))
    if a.get("baseline"):
        parts.insert(0, "the recipe's own values")
    return "; ".join(p for p in parts if p)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if 0.01 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"
    return str(value)


def format_results(results: SweepResults) -> str:
    """The table as aligned text (CJK-wide characters count twice)."""
    cells = [results.columns] + [[_cell(v) for v in row] for row in results.rows]
    widths = [max(display_width(r[i]) for r in cells) for i in range(len(results.columns))]
    lines = ["  ".join(c + " " * (w - display_width(c)) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def write_results(study, space: Space, raw_recipe: dict, recipe_file: Path, sweep_dir: Path) -> SweepResults:
    """trials.csv, best.yaml and the plots into `sweep_dir`; returns the results with `files` filled."""
    results = read_results(study, space)
    csv_path = sweep_dir / "trials.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(results.columns)
        writer.writerows([["" if v is None else v for v in row] for row in results.rows])
    tmp.replace(csv_path)
    results.files.append(csv_path)
    if results.best is not None:
        results.files.append(write_best_recipe(results.best, space, raw_recipe, recipe_file, sweep_dir,
                                               study.user_attrs.get("objective", "objective")))
    results.files += plot_study(study, sweep_dir)
    return results


def write_best_recipe(best, space: Space, raw_recipe: dict, recipe_file: Path, sweep_dir: Path,
                      objective: str) -> Path:
    """The sweep's recipe (as written, overrides applied) with the best trial's values, named `<name>-best`."""
    raw = copy.deepcopy(raw_recipe)
    for d in space.dimensions:
        value = best.params[d.field]
        set_field(raw, d.field, decode_choice(value, d.choices) if d.choices is not None else value)
    raw["name"] = f"{raw.get('name', 'sweep')}-best"
    a = best.user_attrs
    header = [f"# The best feasible trial of the sweep in {sweep_dir}: trial {best.number} ({a.get(RUN_ATTR)}),",
              f"# {objective} {best.value:.6g}"
              + (f", score {a['score']:.4f}" if a.get("score") is not None and objective != "score" else "")
              + (f", ratio {a['ratio']:.6g}" if a.get("ratio") is not None else "")
              + (f", retention {a['retention']}" if a.get("retention") else "") + ".",
              f"# Made from {recipe_file}; run it with: tunelab run {sweep_dir / 'best.yaml'}", ""]
    path = sweep_dir / "best.yaml"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(header) + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
    return path


def plot_study(study, sweep_dir: Path) -> list[Path]:
    """Optuna's history, per-checkpoint and importance plots, and score vs ratio over the trials' runs; a plot the
    study cannot make yet (importances need two finished trials that differ) is skipped with a note."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from tunelab.compare import collect_runs, plot_score_vs_ratio
    from tunelab.errors import TunelabError
    out = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [("history.png", lambda: ovm.plot_optimization_history(study, target_name=study.user_attrs.get(
        "objective", "objective")))]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        def curves():
            ax = ovm.plot_intermediate_values(study)
            ax.set_xlabel("checkpoint (1 = the first; pruning compares trials here)")
            ax.set_ylabel(study.user_attrs.get("objective", "value"))
            return ax
        plots.append(("curves.png", curves))
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        plots.append(("importances.png", lambda: ovm.plot_param_importances(study)))
    else:
        log.info("parameter importances need two finished trials with different values: not plotted yet")
    for name, make in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA on a few trials: "importances will be equal"
            try:
                ax = make()
            except (ValueError, RuntimeError, ImportError) as e:
                log.warning("%s not plotted: %s", name, e)
                continue
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        tmp = sweep_dir / f".{name}.tmp"
        fig.savefig(tmp, format="png", dpi=110)
        tmp.replace(sweep_dir / name)
        plt.close(fig)
        out.append(sweep_dir / name)
    try:
        out.append(plot_score_vs_ratio(collect_runs(sweep_dir), sweep_dir / "score_vs_ratio.png"))
    except TunelabError as e:  # no trial has a score yet (or none is a competition run)
        log.info("score vs ratio not plotted: %s", e.message)
    return out
