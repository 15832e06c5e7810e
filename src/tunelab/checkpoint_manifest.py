"""A checkpoint's manifest: the list of its files, with sizes and checksums, written last.

A checkpoint is written into `step-N.tmp/` and renamed into place, so a kill never leaves half of one under
its final name. But a whole checkpoint can still be damaged afterwards: a disk that filled while a sync tool
copied it, a copy cut short, a file truncated by hand. `state.json` merely existing proved nothing of that.
The manifest (`manifest.json`, written after every other file) records each file's size, and a SHA-256
where hashing is cheap next to writing the file; a checkpoint is whole when every file it lists is there
with that size (and, when asked, that checksum).

Checkpoints written before manifests existed have `state.json` and no manifest: they count as whole
(unverified), as they always did; loading them is the only check they get.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
# Files up to this size get a SHA-256: an adapter, a small model, the optimizer state of a LoRA run. Beyond it
# (the optimizer state of a full fine-tune of an 8B model is ~64 GB) hashing would add minutes to every
# checkpoint, and the size alone still catches the common damage, a truncated file.
CHECKSUM_MAX_BYTES = 1 << 30


def file_sha256(path: Path) -> str:
    """A file's SHA-256 in hex, read a MiB at a time (also the hand-in bundle's SHA256SUMS)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt: Path) -> None:
    """List every file under `ckpt` (sizes, and checksums of the files up to CHECKSUM_MAX_BYTES) into its
    manifest, through a temporary name and a rename: call it after every other file is written."""
    files = {}
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        entry = {"bytes": size}
        if size <= CHECKSUM_MAX_BYTES:
            entry["sha256"] = file_sha256(path)
        files[path.relative_to(ckpt).as_posix()] = entry
    tmp = ckpt / (MANIFEST + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MANIFEST)


def has_manifest(ckpt: Path) -> bool:
    return (ckpt / MANIFEST).is_file()


def manifest_problems(ckpt: Path, checksums: bool = True) -> list[str]:
    """What is wrong with a checkpoint against its manifest, one short phrase a file ('adapter/x.safetensors:
    truncated, 1,204 of 5,678 bytes'); empty when it is whole. Sizes always, checksums when `checksums`."""
    try:
        files = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        return [f"{MANIFEST}: missing"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MANIFEST}: unreadable"]
    problems = []
    for name, entry in files.items():
        path = ckpt / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{name}: missing")
            continue
        want = entry.get("bytes") if isinstance(entry, dict) else None
        if size != want:
            what = "truncated" if isinstance(want, int) and size < want else "changed size"
            problems.append(f"{name}: {what}, {size:,} of {want:,} bytes" if isinstance(want, int)
                            else f"{name}: no size in the manifest")
        elif checksums and entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            problems.append(f"{name}: content changed (checksum differs)")
    return problems
