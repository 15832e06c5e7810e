"""One writer per run: an OS lock on a run, held for as long as a process writes it.

Two processes writing one run directory (a double-clicked job, two terminals, a re-submitted cluster job, two
`--resume`) both trained, logged every step twice in metrics.jsonl and wrote the same checkpoints. The lock is
`<output_dir>/.<name>.lock`, beside the run rather than in it: it is taken before the run directory exists,
and a process refused the lock leaves the run untouched. It is an advisory `flock` (Windows: `msvcrt.locking`)
that the kernel releases when its process dies, so a `kill -9` never leaves a stale lock. The file holds the
holder's PID, host, start time and command, for the refusal to name.

Asking who writes a run (`writer_of`: `tunelab runs`, the web UI's state, polled every few seconds) takes the lock
for an instant, since an advisory lock can only be tested by taking it. A run starting in that instant was
refused, naming the run's last writer (the file is only rewritten by a writer): the web UI's Resume failed so
once in CI. A writer therefore tries again for `PROBE_GRACE` seconds before it refuses; a probe's hold lasts
microseconds, a real writer's minutes.

A process takes a run's lock once however often it asks (`tunelab run` holds it over training and evaluation,
and training asks again): the lock is counted and released by the last release.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from tunelab.errors import TunelabError

_held: dict[Path, list] = {}  # lock path -> [file descriptor, holds]
PROBE_GRACE = 1.0  # seconds a writer waits out a `writer_of` probe before it refuses


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"PID {h['pid']} on {h['host']}, since {h['started']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # it took the lock and has not written its name yet
        return "a process that has not yet said who it is"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the block; another process holding it is an error naming it."""
    path = lock_path(Path(run_dir).absolute())
    held = _held.get(path)
    if held:
        held[1] += 1
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + PROBE_GRACE
        while not _try_lock(fd):
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            os.close(fd)
            raise TunelabError(f"another tunelab process is writing this run ({_holder(path)}); wait for it to "
                               "end or stop it: a run has one writer at a time", file=run_dir)
        program = Path(sys.argv[0]).name
        program = "tunelab" if program == "__main__.py" else program  # python -m tunelab.cli
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([program, *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode("utf-8"))
        held = _held[path] = [fd, 1]
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _held[path]
            os.close(held[0])  # closing the descriptor releases the lock


def writer_of(run_dir: Path) -> str | None:
    """Who is writing the run now (PID, host, start, command), or None when no process is."""
    path = lock_path(Path(run_dir).absolute())
    if path in _held:
        return f"this process (PID {os.getpid()})"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        return None if _try_lock(fd) else _holder(path)
    finally:
        os.close(fd)  # releases the lock if this took it


def writer_pid(run_dir: Path) -> int | None:
    """The PID of the process on this host writing the run now (what a stop signal goes to), or None when no
    process, or one on another host, holds its lock."""
    if writer_of(run_dir) is None:
        return None
    try:
        holder = json.loads(lock_path(Path(run_dir).absolute()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    return pid if isinstance(pid, int) and holder.get("host") == socket.gethostname() else None
