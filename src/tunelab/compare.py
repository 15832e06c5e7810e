"""`tunelab runs table`: every run under a directory side by side, so a sweep by hand (a rank here, a learning rate
there) reads as one table instead of a dozen report.md files.

A row is read from what each run already wrote — recipe.yaml, metrics.json, else train_summary.json or its
checkpoints — and nothing is recomputed: the numbers are the ones the run's trackers got (`tunelab.track.names`:
the recipe flattened the same way, each task's metrics at the best checkpoint, retention, ratio and score). Only
the recipe keys whose values differ between the runs become columns: what was held fixed says nothing about why
one run beat another. A run that is still training, failed, or was only trained is a row without an evaluation;
a damaged file is a row that says which one, never a crash, so one broken run does not hide the others.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


from tunelab.errors import TunelabError
from tunelab.records import read_json_object, read_yaml
from tunelab.runs import best_checkpoint, best_results, list_checkpoints, overall, step_of
from tunelab.track.names import flat_params

log = logging.getLogger(__name__)

IGNORED_KEYS = ("name", "output_dir", "description", "report_to")  # differ between runs by design, or cosmetic
EVALUATED, NOT_EVALUATED = "evaluated", "no evaluation"
_ATTRIBUTES = {"run": "run", "status": "status", "best": "best", "retention": "retention", "ratio": "ratio",
               "score": "score", "val_loss": "val_loss", "perplexity": "perplexity", "steps": "steps",
               "wall_time": "train_seconds"}
_OPTIONAL = ("val_loss", "perplexity")  # pretraining runs' columns: shown when some run has them
_CLIP = 48  # display columns a text cell may take (a model path keeps its tail)


@dataclass
class RunRow:
    """One run directory as the table shows it. `tasks`: "<task label>/<primary metric>" -> its value at the best
    checkpoint; `recipe`: the resolved recipe as recipe.yaml holds it; None where the run has no such number."""

    run: str
    path: Path
    status: str
    recipe: dict[str, Any] = field(default_factory=dict)
    best: str | None = None
    tasks: dict[str, float] = field(default_factory=dict)
    retention: str | None = None   # PASS (all passed) | FAIL | cannot judge (a base near zero) | None (no baseline)
    ratio: float | None = None
    score: float | None = None
    val_loss: float | None = None  # pretraining: the best checkpoint's validation loss
    perplexity: float | None = None
    steps: int | None = None
    train_seconds: float | None = None


def collect_runs(root: str | Path) -> list[RunRow]:
    """Every run directory under `root` (a directory holding recipe.yaml; `root` itself may be one), by path. A
    hand-in bundle (`tunelab handin`: it holds the recipe too, beside its MANIFEST.sha256) is not a run."""
    root = Path(root)
    if not root.is_dir():
        raise TunelabError("not a directory", file=root)
    rows = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "recipe.yaml" in files:
            dirs[:] = []  # a run's checkpoints/, eval/ and tokenizer/ are not runs
            if "MANIFEST.sha256" in files:
                continue
            path = Path(here)
            rows.append(read_run(path, root.resolve().name if path == root else path.relative_to(root).as_posix()))
    return sorted(rows, key=lambda r: r.run)


def read_run(path: Path, name: str) -> RunRow:
    """One run's row; each file that cannot be read (bad bytes, malformed JSON or YAML, not what tunelab writes)
    is named in the status and logged with what is wrong with it."""
    unreadable = []
    recipe: dict[str, Any] = {}
    try:
        recipe = _read_recipe(path / "recipe.yaml")
    except TunelabError as e:
        unreadable.append("recipe.yaml")
        log.warning("%s", e)
    found, source = {}, None
    for file, read in (("metrics.json", _from_metrics), ("train_summary.json", _from_summary)):
        if not (path / file).exists():
            continue
        try:
            found, source = read(read_json_object(path / file)), file
            break
        except TunelabError as e:
            log.warning("%s", e)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning("%s: not a tunelab %s (%s: %s)", path / file, file, type(e).__name__, e)
        unreadable.append(file)
    if source is None:
        try:
            found = _from_checkpoints(path)
        except TunelabError as e:
            log.warning("%s", e)
            unreadable.append("checkpoints")
    status = (f"unreadable: {', '.join(unreadable)}" if unreadable
              else EVALUATED if source == "metrics.json" else NOT_EVALUATED)
    return RunRow(run=name, path=path, status=status, recipe=recipe, **found)


def _read_recipe(path: Path) -> dict[str, Any]:
    raw, _ = read_yaml(path)
    if not isinstance(raw, dict):
        raise TunelabError("not a recipe (expected a YAML mapping)", file=path)
    return raw


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _perplexity(val_loss: float | None) -> float | None:
    return math.exp(min(val_loss, 700)) if val_loss is not None else None


def _from_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """A `tunelab run` metrics.json, of any run kind: each task's primary metric at the best checkpoint, the
    outcome (retention, ratio, score) when it is a competition run, the validation loss when pretraining."""
    tasks = {}
    for label, r in best_results(m).items():
        metric = r.get("primary_metric")
        if _number(r.get(metric)) is not None:
            tasks[f"{label}/{metric}"] = r[metric]
    val_loss = _number(m.get("best_val_loss")) if m.get("pretraining") else None
    train = m.get("train") or {}
    return {"best": m.get("best_checkpoint"), "tasks": tasks,
            "retention": overall(m.get("retention") or {}),
            "ratio": _number(m["ratio"]["ratio"]) if m.get("ratio") else None,
            "score": _number(m["score"]["value"]) if m.get("score") else None,
            "val_loss": val_loss, "perplexity": _perplexity(val_loss),
            "steps": _number(train.get("steps")), "train_seconds": _number(train.get("train_seconds"))}


def _from_summary(s: dict[str, Any]) -> dict[str, Any]:
    """A trained but not evaluated run: the trainer's summary (its best is the lowest validation loss)."""
    val_loss = _number(s.get("best_val_loss"))
    return {"best": Path(s["best_checkpoint"]).name if s.get("best_checkpoint") else None,
            "val_loss": val_loss, "perplexity": _perplexity(val_loss),
            "steps": _number(s.get("steps")), "train_seconds": _number(s.get("train_seconds"))}


def _from_checkpoints(path: Path) -> dict[str, Any]:
    """A run still training (or stopped) before its summary: how far its whole checkpoints got."""
    ckpts = list_checkpoints(path)
    if not ckpts:
        return {}
    best, val_loss = best_checkpoint(path)
    return {"best": best, "val_loss": val_loss, "perplexity": _perplexity(val_loss),
            "steps": step_of(ckpts[-1])}


def flat_recipes(recipes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each recipe as the trackers' hyperparameters (`flat_params`: dotted keys, a list of values as its
    comma-joined text), a list of sections numbered (`eval.tasks.1.source.count`) where every recipe has as many,
    so that one task's setting differs and not the whole list; where their number differs, the list is one value
    (each section's set keys, `; ` between sections)."""
    sections: dict[str, set] = {}

    def lengths(value: Any, path: str, found: dict[str, int]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                lengths(v, f"{path}{k}.", found)
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            found[path] = len(value)
            for i, v in enumerate(value):
                lengths(v, f"{path}{i}.", found)
    per_recipe = []
    for recipe in recipes:
        found: dict[str, int] = {}
        lengths(recipe, "", found)
        per_recipe.append(found)
    for path in {p for found in per_recipe for p in found}:
        sections[path] = {found.get(path, 0) for found in per_recipe}

    def numbered(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {str(k): numbered(v, f"{path}{k}.") for k, v in value.items()}
        if isinstance(value, list) and path in sections:
            if len(sections[path]) == 1:
                return {str(i): numbered(v, f"{path}{i}.") for i, v in enumerate(value)}
            return "; ".join(" ".join(f"{k}={_shown(v)}" for k, v in flat_params(entry).items() if v is not None)
                             if isinstance(entry, dict) else _shown(entry) for entry in value) or "[]"
        return value
    return [flat_params(numbered(recipe, "")) for recipe in recipes]


def _differing(flats: list[dict[str, Any]]) -> list[str]:
    """The dotted recipe keys whose values differ between the runs (a key one recipe lacks differs too), in the
    order the recipes list them; run names, output paths, descriptions and trackers left out."""
    keys = dict.fromkeys(k for flat in flats for k in flat if k.split(".")[0] not in IGNORED_KEYS)
    return [k for k in keys if len({_shown(flat[k]) if k in flat else None for flat in flats}) > 1]


def _shown(value: Any) -> str:
    """A recipe value as recipe.yaml spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table(rows: list[RunRow]) -> tuple[list[str], list[list[Any]]]:
    """(columns, a row of values per run): run, status, the differing recipe keys, best, each task's primary
    metric, retention, ratio, score, the validation loss and perplexity (when a run has them), steps, wall time.
    A value is a number, a text, or None (not measured, or a key the run's recipe lacks). Runs whose recipe.yaml
    could not be read take no part in which keys differ."""
    flats = flat_recipes([r.recipe for r in rows])
    keys = _differing([flat for flat, r in zip(flats, rows) if r.recipe])
    tasks = list(dict.fromkeys(k for r in rows for k in r.tasks))
    optional = [c for c in _OPTIONAL if any(getattr(r, c) is not None for r in rows)]
    head, tail = ["run", "status"], ["best", *tasks, "retention", "ratio", "score", *optional, "steps", "wall_time"]
    values = [[getattr(r, _ATTRIBUTES[c]) for c in head]
              + [(flat[k] if _number(flat[k]) is not None else _shown(flat[k])) if k in flat else None for k in keys]
              + [getattr(r, _ATTRIBUTES[c]) if c in _ATTRIBUTES else r.tasks.get(c) for c in tail]
              for r, flat in zip(rows, flats)]
    return [*head, *keys, *tail], values


def sort_rows(rows: list[RunRow], key: str = "score", descending: bool = True) -> list[RunRow]:
    """The rows ordered by a column: numbers as numbers, texts as texts (numbers first), runs without a value
    last whichever the direction; equal values keep their order. An unknown column names the ones there are."""
    columns, values = table(rows)
    if key not in columns:
        raise TunelabError(f"no column '{key}' to sort by; the columns are: {', '.join(columns)}", field="--sort")
    at = columns.index(key)
    present = [(row, line[at]) for row, line in zip(rows, values) if line[at] is not None]

    def order(pair: tuple[RunRow, Any]) -> tuple:
        value = pair[1]
        return (0, value, "") if _number(value) is not None else (1, 0, str(value).casefold())
    ranked = [row for row, _ in sorted(present, key=order, reverse=descending)]
    return ranked + [row for row, line in zip(rows, values) if line[at] is None]


def cell_text(column: str, value: Any) -> str:
    """A value as the table prints it (`–` where not measured, wall time as a duration, a score to 4 places)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if column == "wall_time":
        return _duration(value)
    if column == "steps":
        return f"{value:.0f}"
    fmt = {"ratio": ".3g", "score": ".4f", "val_loss": ".4f", "perplexity": ".2f"}.get(column)
    return format(value, fmt or (",.0f" if abs(value) >= 1000 else ".4g"))


def _duration(seconds: float) -> str:
    """12.3s, 4m05s, 2h07m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def display_width(text: str) -> int:
    """Terminal columns: East Asian wide and fullwidth characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _clip(text: str, limit: int = _CLIP) -> str:
    """At most `limit` columns: a path keeps its tail (its last parts tell runs apart), other text its head."""
    if display_width(text) <= limit:
        return text
    tail = "/" in text and " " not in text
    while display_width(text) > limit - 1:
        text = text[1:] if tail else text[:-1]
    return "…" + text if tail else text + "…"


def format_table(rows: list[RunRow]) -> str:
    """The rows as aligned plain-text columns (numbers to the right), a header and a rule above them; Chinese and
    other wide characters count as two columns."""
    columns, values = table(rows)
    cells = [[_clip(cell_text(c, v)) for c, v in zip(columns, line)] for line in values]
    right = [any(_number(line[i]) is not None for line in values) for i in range(len(columns))]
    widths = [max(display_width(t) for t in [c, *(line[i] for line in cells)]) for i, c in enumerate(columns)]

    def line(texts: list[str]) -> str:
        padded = [" " * (w - display_width(t)) + t if r else t + " " * (w - display_width(t))
                  for t, w, r in zip(texts, widths, right)]
        return "  ".join(padded).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(texts) for texts in cells)])


@contextlib.contextmanager
def _replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write, renamed onto `path` when it ends (removed if it
    raises): a table or plot that is cut short never takes the place of a whole one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(rows: list[RunRow], path: str | Path) -> Path:
    """The table as CSV: the same columns, numbers unrounded (wall_time in seconds), empty where not measured.
    UTF-8 with a byte-order mark, so that Excel shows Chinese run names and recipe values as written."""
    columns, values = table(rows)
    with _replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(["" if v is None else v for v in line] for line in values)
    return Path(path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (ratio, score) points no other point beats on both (a lower or equal ratio with a higher or equal
    score, one of them strictly), lowest ratio first; a repeated point is on it once."""
    front: list[tuple[float, float]] = []
    for ratio, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((ratio, score))
    return front


def feasible_front(rows: list[RunRow]) -> list[tuple[float, float]]:
    """The Pareto front of the scored runs a competition would accept: a run that failed retention is not
    handed in, so it cannot be what another run is measured against, however high it scores."""
    return pareto_front([(r.ratio, r.score) for r in rows
                         if r.score is not None and r.ratio is not None and r.retention != "FAIL"])


_CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei",
              "PingFang SC", "Heiti SC")


def plot_score_vs_ratio(rows: list[RunRow], path: str | Path) -> Path:
    """Score against low-parameter ratio, one labelled point per scored run (retention PASS, FAIL or not
    measured as three markers) and the Pareto front (higher score, lower ratio) of the runs whose retention did
    not fail as a step line: the best score reachable at or below each ratio."""
    scored = [r for r in rows if r.score is not None and r.ratio is not None]
    if not scored:
        raise TunelabError("no run here has a score and a ratio to plot (competition runs that `tunelab run` "
                           "evaluated have them)", field="--png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    installed = {f.name for f in font_manager.fontManager.ttflist}
    fonts = [f for f in _CJK_FONTS if f in installed] + ["DejaVu Sans"]  # run names in Chinese, where a font has them
    styles = {"PASS": ("o", "tab:green", "retention PASS"), "FAIL": ("X", "tab:red", "retention FAIL"),
              None: ("s", "tab:gray", "no retention baseline")}
    with plt.rc_context({"font.family": "sans-serif", "font.sans-serif": fonts}):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for verdict, (marker, color, label) in styles.items():
            group = [r for r in scored if r.retention == verdict]
            if group:
                ax.scatter([r.ratio for r in group], [r.score for r in group], marker=marker, color=color, s=50,
                           label=label, zorder=3)
        for r in scored:
            ax.annotate(r.run, (r.ratio, r.score), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = feasible_front(scored)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", alpha=0.6,
                    label="Pareto front (retention not failed)", zorder=2)
        ratios = [r.ratio for r in scored]
        if min(ratios) > 0 and max(ratios) / min(ratios) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel("low-parameter ratio (trainable / total parameters)")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("score against low-parameter ratio")
        fig.tight_layout()
        with _replacing(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return Path(path)
