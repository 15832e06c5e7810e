"""Prediction files handed to `tunelab grade`: JSONL with `prediction` (and `id`), the JSON lines of `tunelab
generate --json` (`text`, one sample a prompt), or one answer per line, matched to the gold answers by id when
both sides have ids, else by position.

Lines end at "\n" only (a trailing "\r" is dropped): other Unicode line breaks (U+2028, "\x1c", "\x85", …)
and control characters are part of an answer, so a model's answer holding one is still one answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.records import iter_records, read_text, require_str


def read_prediction_file(path: Path) -> list[dict[str, Any]]:
    """JSONL with 'prediction' (sniffed from the first non-blank line), or with 'text' and 'prompt' as `tunelab
    generate --json` writes them, else one answer per line."""
    text = read_text(path)
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    if lines[-1] == "":  # the final newline ends the last line; it does not start another
        lines.pop()
    first = next((ln for ln in lines if ln.strip()), "")
    try:
        head = json.loads(first) if first.lstrip().startswith("{") else None
    except (ValueError, RecursionError):  # not JSON, nested too deeply, or a number too long to convert
        head = None
    if isinstance(head, dict) and "prediction" in head:
        return [{"prediction": require_str(rec, "prediction", path, line),
                 "id": require_str(rec, "id", path, line) if "id" in rec else None}
                for line, rec in iter_records(path)]
    if isinstance(head, dict) and "text" in head and "prompt" in head:  # `tunelab generate --json`
        records = list(iter_records(path))
        if any(rec.get("sample", 1) != 1 for _, rec in records):
            raise TunelabError("holds several samples a prompt (generate -n N): grade one sample a prompt",
                               file=path)
        records.sort(key=lambda item: item[1].get("prompt_index", 0))
        return [{"prediction": require_str(rec, "text", path, line), "id": None} for line, rec in records]
    while lines and not lines[-1].strip():
        lines.pop()
    return [{"prediction": ln, "id": None} for ln in lines]


def match_predictions(preds: list[dict], gold: list[dict], pred_path: Path, gold_path: Path) -> list[str]:
    """Predictions in gold order: by id when every record on both sides has one, else by position."""
    counts = f"{len(preds)} predictions in {pred_path}, {len(gold)} answers in {gold_path}"
    if preds and gold and all(p["id"] is not None for p in preds) and all(g["id"] is not None for g in gold):
        by_id = {p["id"]: p["prediction"] for p in preds}
        if len(by_id) != len(preds):
            raise TunelabError(f"duplicate ids ({counts})", file=pred_path)
        missing = [g["id"] for g in gold if g["id"] not in by_id]
        if missing or len(preds) != len(gold):
            detail = f"; {len(missing)} gold ids have no prediction, e.g. {missing[0][:80]!r}" if missing else ""
            raise TunelabError(f"predictions do not match the gold answers ({counts}{detail})")
        return [by_id[g["id"]] for g in gold]
    if len(preds) != len(gold):
        raise TunelabError(f"predictions do not match the gold answers ({counts})")
    return [p["prediction"] for p in preds]
