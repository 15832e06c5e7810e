"""The layout version of what a run writes for tunelab itself to read back — a checkpoint's trainer state — and
the one function that brings an older file to today's layout, so that every reader sees one shape and no reader
keeps its own "a file from before ..." branch.

Versions:
1. files from before versions were recorded (no `format_version`): `log_window` has three sums (loss × items,
   items, tokens: the samples' own tokens were not counted apart, they were the tokens) and `loss_window` is one
   window, rank 0's.
2. `log_window` has four sums (sample tokens last) and `loss_window` one window a rank.

A file from a newer tunelab is refused in one line rather than misread.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

FORMAT_VERSION = 2
KINDS = ("trainer_state",)


def stamped(doc: dict) -> dict:
    """`doc` as written today: with the current `format_version`."""
    return {**doc, "format_version": FORMAT_VERSION}


def migrate(doc: dict, kind: str, file: str | Path | None = None) -> dict:
    """`doc` (a `kind` file read from `file`) in today's layout; an older one brought forward step by step."""
    if kind not in KINDS:
        raise ValueError(f"unknown run file kind {kind!r}")
    version = doc.get("format_version", 1)
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise TunelabError(f"written by another tunelab (format {version!r}; this one reads 1 to {FORMAT_VERSION}): "
                           "continue it with the tunelab that wrote it", file=file, field="format_version")
    out = dict(doc)
    if version < 2:
        window = out.get("log_window")
        if window is not None and len(window) == 3:
            out["log_window"] = (*window, window[2])
        if isinstance(out.get("loss_window"), dict):
            out["loss_window"] = [out["loss_window"]]
    out["format_version"] = FORMAT_VERSION
    return out
