"""GLUE CoLA and QQP: read the task TSVs and write instruction-tuning files (`tunelab data glue`).

The TSVs are tab-separated without quoting; lines end in "\\n" or "\\r\\n"; blank lines are skipped.

* CoLA train.tsv / dev.tsv have NO header and four columns: source, label (0/1), original mark, sentence.
  CoLA test.tsv has the header "index<TAB>sentence" and no label.
* QQP files start with a header: "id qid1 qid2 question1 question2 is_duplicate" (labelled) or
  "id question1 question2" (test, unlabelled).

A row with the wrong number of columns is an error naming the file, the line and the columns expected.

`write_pre_data` (the CLI `tunelab data glue`) samples `limit` labelled rows of train.tsv reproducibly
(seed), splits `val_fraction` of them off as a labelled validation set, and writes JSON arrays of
{instruction, input, output} records:

    {out}/{task}/{task}_train.json   sampled train rows minus the validation part
    {out}/{task}/{task}_val.json     the labelled validation part
    {out}/{task}/{task}_dev.json     every row of dev.tsv (output "" where dev.tsv has no labels)

`output` is the GLUE label "1"/"0". Default instructions (override with --instruction):

* CoLA: "Determine whether the following English sentence is grammatically acceptable. Answer 1 if it is
  acceptable and 0 if it is not." — input: the sentence.
* QQP: "Determine whether the following two questions ask the same thing. Answer 1 if they are duplicates
  and 0 if they are not." — input: "Question 1: {question1}\\nQuestion 2: {question2}".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.records import read_text, write_json

TASKS = {"cola": "CoLA", "qqp": "QQP"}
INSTRUCTIONS = {
    "CoLA": ("Determine whether the following English sentence is grammatically acceptable. "
             "Answer 1 if it is acceptable and 0 if it is not."),
    "QQP": ("Determine whether the following two questions ask the same thing. "
            "Answer 1 if they are duplicates and 0 if they are not."),
}
COLA_COLUMNS = ("source", "label", "original mark", "sentence")
COLA_TEST_HEADER = ("index", "sentence")
QQP_HEADER = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
QQP_TEST_HEADER = ("id", "question1", "question2")


@dataclass
class GlueRow:
    line: int
    text_a: str
    text_b: str | None = None
    label: str | None = None  # "0"/"1", None when the file has no labels
    id: str | None = None


def canonical_task(name: str) -> str:
    """'cola' / 'CoLA' -> 'CoLA'; 'qqp' -> 'QQP'."""
    key = name.strip().lower()
    if key not in TASKS:
        raise TunelabError(f"unknown GLUE task '{name}' (choose from {', '.join(TASKS.values())})", field="task")
    return TASKS[key]


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, columns) of the non-blank lines."""
    out = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            out.append((lineno, line.split("\t")))
    return out


def _check_columns(path: Path, line: int, cols: list[str], expected: tuple[str, ...]) -> None:
    if len(cols) != len(expected):
        raise TunelabError(f"expected {len(expected)} tab-separated columns ({', '.join(expected)}), "
                           f"found {len(cols)}", file=path, line=line)


def _label(path: Path, line: int, value: str, field: str) -> str:
    value = value.strip()
    if value not in ("0", "1"):
        raise TunelabError(f"label must be 0 or 1, got {value!r}", file=path, line=line, field=field)
    return value


def read_glue_tsv(path: str | Path, task: str) -> list[GlueRow]:
    """Rows of a CoLA or QQP TSV (train, dev or test), labels None when the file has none."""
    path, task = Path(path), canonical_task(task)
    lines = _lines(path)
    if not lines:
        raise TunelabError("file is empty", file=path)
    rows: list[GlueRow] = []
    if task == "CoLA":
        first = tuple(c.strip().lower() for c in lines[0][1])
        if first == COLA_TEST_HEADER:
            for line, cols in lines[1:]:
                _check_columns(path, line, cols, COLA_TEST_HEADER)
                rows.append(GlueRow(line, cols[1], id=cols[0]))
        else:
            for line, cols in lines:
                _check_columns(path, line, cols, COLA_COLUMNS)
                rows.append(GlueRow(line, cols[3], label=_label(path, line, cols[1], "label"), id=None))
    else:
        header = tuple(c.strip().lower() for c in lines[0][1])
        if header not in (QQP_HEADER, QQP_TEST_HEADER):
            raise TunelabError("QQP files start with the header '" + "\\t".join(QQP_HEADER) + "' (or '"
                               + "\\t".join(QQP_TEST_HEADER) + "' for test files), found "
                               + repr("\t".join(lines[0][1])[:80]), file=path, line=lines[0][0])
        for line, cols in lines[1:]:
            _check_columns(path, line, cols, header)
            if header == QQP_HEADER:
                rows.append(GlueRow(line, cols[3], cols[4], _label(path, line, cols[5], "is_duplicate"), cols[0]))
            else:
                rows.append(GlueRow(line, cols[1], cols[2], None, cols[0]))
    if not rows:
        raise TunelabError("no data rows", file=path)
    return rows


def glue_input(task: str, row: GlueRow) -> str:
    if canonical_task(task) == "CoLA":
        return row.text_a
    return f"Question 1: {row.text_a}\nQuestion 2: {row.text_b}"


def to_records(task: str, rows: list[GlueRow], instruction: str | None = None) -> list[dict[str, str]]:
    """{instruction, input, output} records; output is the label, "" for unlabelled rows."""
    task = canonical_task(task)
    text = INSTRUCTIONS[task] if instruction is None else instruction
    return [{"instruction": text, "input": glue_input(task, r), "output": r.label or ""} for r in rows]


def _find(data_dir: Path, task: str, name: str) -> Path:
    for p in (data_dir / name, data_dir / task / name):
        if p.is_file():
            return p
    raise TunelabError(f"no {name} in {data_dir} or {data_dir / task}", file=data_dir)


def write_pre_data(task: str, data_dir: str | Path, out: str | Path, *, limit: int | None = None,
                   seed: int = 0, instruction: str | None = None, val_fraction: float = 0.1) -> dict:
    """Write {out}/{task}/{task}_{train,val,dev}.json (see the module docstring); returns counts and paths."""
    task, data_dir = canonical_task(task), Path(data_dir)
    if not 0 <= val_fraction < 1:
        raise TunelabError(f"must be in [0, 1), got {val_fraction}", field="val_fraction")
    if limit is not None and limit < 1:
        raise TunelabError(f"must be positive, got {limit}", field="limit")
    if not data_dir.is_dir():
        raise TunelabError("data directory not found", file=data_dir)
    train_path = _find(data_dir, task, "train.tsv")
    train = read_glue_tsv(train_path, task)
    if train[0].label is None:
        raise TunelabError("the training file has no labels", file=train_path)
    dev = read_glue_tsv(_find(data_dir, task, "dev.tsv"), task)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    chosen = [train[i] for i in order[:limit]]
    n_val = int(round(len(chosen) * val_fraction))
    if val_fraction > 0 and len(chosen) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(chosen) - 1)
    val, train_part = chosen[:n_val], chosen[n_val:]
    folder = Path(out) / task
    paths = {}
    for split, rows in (("train", train_part), ("val", val), ("dev", dev)):
        paths[split] = folder / f"{task}_{split}.json"
        write_json(paths[split], to_records(task, rows, instruction))
    return {"task": task, "train": len(train_part), "val": len(val), "dev": len(dev),
            "dev_labelled": dev[0].label is not None, "source_train": len(train),
            "paths": {k: str(v) for k, v in paths.items()}}
