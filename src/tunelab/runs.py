"""A run directory's layout: its checkpoints, and which one is best.

    <run>/checkpoints/step-000120/   one checkpoint (what it holds: `tunelab.train.checkpoints`)
        model/ or adapter/           the directory to load (`model_dir_of`)
        manifest.json                written last: the files, their sizes and SHA-256 (`tunelab.checkpoint_manifest`)
    <run>/checkpoints/step-000140.tmp/      being written, or cut short by a kill: never a checkpoint
    <run>/checkpoints/step-000160.damaged/  found damaged and moved aside by --resume: kept, never used
    <run>/metrics.jsonl              one line a logged step, appended as the run goes (`read_metrics`)
    <run>/train_summary.json         the trainer's; `best_checkpoint`: the lowest validation loss
    <run>/metrics.json               `tunelab run`'s; `best_checkpoint`: the best on the evaluated tasks, whose
                                     results `best_results` gives; retention entries read by `verdict`/`overall`

Train, eval, serve and export all choose checkpoints here, so "the best checkpoint" means one thing
everywhere. It sits at the bottom of the import graph (it needs nothing of tunelab but the error type, the
file I/O and the manifests, all foundation too), so every stage may use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tunelab.checkpoint_manifest import has_manifest, manifest_problems
from tunelab.errors import TunelabError
from tunelab.records import decode_text, iter_lines, parse_json, read_json_object

STEP_PREFIX = "step-"
STEP_NAME = re.compile(rf"{STEP_PREFIX}(\d+)")
DAMAGED = ".damaged"


class Ranked(Protocol):
    """What `best_label` needs of a task: its primary metric and which way is better."""

    primary_metric: str
    higher_is_better: bool


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{STEP_PREFIX}{step:06d}"


def is_run_dir(path: str | Path) -> bool:
    """A training run's directory (it has checkpoints/), as `model.path` may name one: its best checkpoint."""
    return (Path(path) / "checkpoints").is_dir()


def step_of(ckpt: Path) -> int:
    """The step a checkpoint directory was written at (`step-000120` -> 120)."""
    return int(STEP_NAME.fullmatch(ckpt.name).group(1))


def is_whole(ckpt: Path, checksums: bool = False) -> bool:
    """Whole: its manifest matches its files (sizes; checksums too when asked), or, written before manifests
    existed, it has its state.json."""
    if has_manifest(ckpt):
        return not manifest_problems(ckpt, checksums)
    return (ckpt / "state.json").is_file()


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Every `step-N` directory, whole or not, in step order (`step-1000000` after `step-999999`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    # a name with a suffix (step-000040.tmp, step-000040.damaged) is being written, was cut short, or was set aside
    return sorted((p for p in root.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()), key=step_of)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Whole checkpoints (`is_whole`, by file sizes), oldest first by step number."""
    return [p for p in checkpoint_dirs(run_dir) if is_whole(p)]


def check_whole(ckpt: Path) -> None:
    """A checkpoint about to be loaded: its manifest's damage (checksums included) as one error naming the file."""
    if has_manifest(ckpt):
        problems = manifest_problems(ckpt)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise TunelabError(f"damaged checkpoint: {problems[0]}{more}", file=ckpt)


@dataclass
class CheckpointCheck:
    """One entry of `tunelab runs check`: a checkpoint directory and what it is."""

    name: str
    status: str        # whole | damaged | unfinished | set aside
    detail: str = ""
    bytes: int = 0


def check_checkpoints(run_dir: str | Path, checksums: bool = True) -> list[CheckpointCheck]:
    """Every directory under the run's checkpoints/, in step order, with checksums verified (file sizes only
    without `checksums`: what a page refreshed every few seconds can afford): whole (with its manifest, or
    written before manifests and so unverified), damaged (what is wrong), unfinished (`.tmp`: a write cut short,
    never used) or set aside (`.damaged`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise TunelabError("no checkpoints here (expected a run directory)", file=run_dir)
    out = []
    named = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir()
             for m in [re.match(rf"{STEP_PREFIX}(\d+)", p.name)] if m]
    for _, p in sorted(named, key=lambda x: (x[0], x[1].name)):
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.name.endswith(".tmp"):
            out.append(CheckpointCheck(p.name, "unfinished", "a write cut short; never used", size))
        elif DAMAGED in p.name:
            out.append(CheckpointCheck(p.name, "set aside", "found damaged when the run resumed; kept", size))
        elif not STEP_NAME.fullmatch(p.name):
            continue
        elif has_manifest(p):
            problems = manifest_problems(p, checksums)
            detail = "; ".join(problems) or ("written when the run was stopped; the next regular checkpoint "
                                             "replaces it" if is_preemption(p) else "")
            out.append(CheckpointCheck(p.name, "damaged" if problems else "whole", detail, size))
        elif (p / "state.json").is_file():
            out.append(CheckpointCheck(p.name, "whole", "no manifest (written before manifests): unverified", size))
        else:
            out.append(CheckpointCheck(p.name, "damaged", "no manifest and no state.json", size))
    return out


def is_preemption(ckpt: Path) -> bool:
    """Written when the run was stopped on request, outside the evenly spaced checkpoints."""
    try:
        return bool(read_json_object(ckpt / "state.json").get("preemption"))
    except TunelabError:
        return False


def set_aside(ckpt: Path) -> Path:
    """Move a damaged checkpoint out of the run's checkpoints (`step-N.damaged`, `.damaged-2`, …): never deleted,
    so whatever is left of it can still be inspected or recovered by hand."""
    target = ckpt.with_name(ckpt.name + DAMAGED)
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{ckpt.name}{DAMAGED}-{n}")
    ckpt.rename(target)
    return target


def model_dir_of(ckpt: Path) -> Path:
    """The directory to load for inference: merged/full model if present, else the adapter."""
    return ckpt / "model" if (ckpt / "model").is_dir() else ckpt / "adapter"


def best_checkpoint(run_dir: str | Path) -> tuple[str | None, float | None]:
    """(name, val_loss) of the checkpoint with the lowest validation loss (the earliest on a tie);
    (None, None) when no checkpoint has one (runs without a validation split)."""
    best = (None, None)
    for ckpt in list_checkpoints(run_dir):
        val = read_json_object(ckpt / "state.json").get("val_loss")
        if isinstance(val, (int, float)) and (best[1] is None or val < best[1]):
            best = (ckpt.name, val)
    return best


def best_label(table: dict[str, dict], label: str, task: Ranked) -> str:
    """The model/checkpoint whose `label` result is best on the task's primary metric (the first on a tie)."""
    key = lambda k: table[k][label][task.primary_metric]  # noqa: E731
    return max(table, key=key) if task.higher_is_better else min(table, key=key)


def pick_checkpoint(run_or_ckpt: Path, which: str = "best") -> Path:
    """A checkpoint's loadable model dir: `best` from metrics.json when known (best by the evaluated tasks),
    else from train_summary.json (a pretraining run's lowest validation loss), else the last one.
    A checkpoint gives its model dir, a model or adapter directory itself."""
    if (run_or_ckpt / "config.json").exists() or (run_or_ckpt / "adapter_config.json").exists():
        return run_or_ckpt
    if (run_or_ckpt / "state.json").exists() or has_manifest(run_or_ckpt):
        check_whole(run_or_ckpt)
        return model_dir_of(run_or_ckpt)
    dirs = checkpoint_dirs(run_or_ckpt)
    if not dirs:
        raise TunelabError("no checkpoints here (expected a run directory, a checkpoint or a model directory)",
                           file=run_or_ckpt)
    chosen = dirs[-1]  # the newest, damaged or not: never silently an older one
    for marked in ("metrics.json", "train_summary.json"):
        if which == "best" and (run_or_ckpt / marked).exists():
            best = read_json_object(run_or_ckpt / marked).get("best_checkpoint")
            named = [c for c in checkpoint_dirs(run_or_ckpt) if c.name == best]
            if named:  # the best, damaged or not: never silently another one in its place
                chosen = named[0]
                break
    check_whole(chosen)
    return model_dir_of(chosen)


def read_metrics(path: str | Path) -> list[dict]:
    """The lines of a run's metrics.jsonl, each a JSON object with an integer `step`; [] when there is no file.

    The one rule for a bad line, for every reader (plots, the summary, resume, the UI's live curves): the trainer
    appends each line in one write ending in its newline, so only the last line can lack its newline — a run
    being written, or killed mid-line. That line is left out when it does not read as a metrics line (a resumed
    run recomputes it). Any line that ends in a newline and is not a metrics line is damage: a TunelabError
    naming the file and the line, never skipped in silence."""
    p = Path(path)
    if not p.exists():
        return []
    if p.is_dir():
        raise TunelabError("expected a file, found a directory", file=p)
    data = p.read_bytes()
    cut = data.rfind(b"\n") + 1
    text = decode_text(data[:cut], p, "JSONL text")  # a torn tail may end inside a UTF-8 character
    rows = [_metrics_line(parse_json(line, p, n), p, n) for n, line in iter_lines(text)]
    tail = data[cut:]
    if tail.strip():
        try:
            row = json.loads(tail.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError too: a line being written, or cut short by a kill
            return rows
        rows.append(_metrics_line(row, p, text.count("\n") + 1))
    return rows


def _metrics_line(row, path: Path, line: int) -> dict:
    if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
        raise TunelabError("not a metrics line (a JSON object with an integer step)", file=path, line=line)
    return row


def best_results(metrics: dict) -> dict:
    """The results of a run's best checkpoint by task label, from its metrics.json: {} when it has no best or
    none was evaluated (a pretraining run measures no task)."""
    return (metrics.get("checkpoints") or {}).get(metrics.get("best_checkpoint")) or {}


CANNOT_JUDGE = "cannot judge"


def verdict(entry: dict) -> str:
    """One retention entry's verdict (`tunelab.eval.retention` writes the entries): PASS, FAIL, or why it cannot
    be judged."""
    if entry.get("pass") is None:
        return entry.get("verdict") or CANNOT_JUDGE
    return "PASS" if entry["pass"] else "FAIL"


def overall(entries: dict) -> str | None:
    """The verdict of several entries: FAIL when one fails, else "cannot judge" when one cannot be judged, else
    PASS; None without entries."""
    if not entries:
        return None
    passes = [e.get("pass") for e in entries.values()]
    return "FAIL" if False in passes else CANNOT_JUDGE if None in passes else "PASS"
