"""The output of `synth qa`, append-only and resumable: pairs in OUT, each article's status in a journal beside it.

    qa.jsonl          {"question", "answer", "source_id"} per line (and "chunk" for a chunk of a cut article)
    qa.status.jsonl   {"run": {...}} for every start (settings, time), then one line per finished article:
                      {"key", "status": "done"|"failed", "pairs", "attempts", "end", "reason"?}

An article is committed by two appends made back to back with no await between (so concurrent articles never
interleave): its pairs to OUT in one write, then its status line, whose `end` is OUT's size after the pairs.
The journal is the commit record: on the next start a partial last journal line is cut off, and OUT is cut
back to the last committed `end`, which removes both a partial last line and the pairs of an article killed
between its two writes (that article is asked again). So a rerun skips finished articles, never duplicates a
pair, and `kill -9` at any moment costs at most the articles in flight. Writes are not fsynced: a killed
process loses nothing the kernel has, a power cut may lose the last articles (and is repaired the same way).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.synth.articles import Article

FORMAT = "tunelab-synth-qa/1"


def companion_paths(out: Path) -> tuple[Path, Path]:
    """(journal, report) beside OUT: qa.jsonl -> qa.status.jsonl, qa.report.json."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".status.jsonl"), out.with_name(stem + ".report.json")


@dataclass
class Resumed:
    """What an earlier run left: finished articles, accepted questions, and what the repair removed."""
    finished: dict[str, dict] = field(default_factory=dict)   # key -> its last status line
    questions: list[str] = field(default_factory=list)
    pairs: int = 0
    partial_journal_line: bool = False
    dropped_bytes: int = 0      # OUT past the last commit: a partial line and/or an uncommitted article's pairs
    dropped_lines: int = 0

    def done(self) -> int:
        return sum(1 for s in self.finished.values() if s["status"] == "done")

    def failed(self) -> int:
        return sum(1 for s in self.finished.values() if s["status"] == "failed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines of `data` and the length of the complete part (a last line without newline is partial)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


class Journal:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.status_path, self.report_path = companion_paths(self.out)
        self._out_fd: int | None = None
        self._status_fd: int | None = None
        self.end = 0

    def check(self) -> None:
        """Refuse, before anything is asked, an existing OUT that `synth qa` did not start (never overwritten)."""
        if not self.status_path.exists() and self.out.exists() and self.out.stat().st_size:
            raise TunelabError(f"exists without its journal {self.status_path.name}: not written by `synth qa`, "
                               "or the journal was removed; choose another output file", file=self.out)

    def open(self, run: dict, identity: dict) -> Resumed:
        """Start or resume: repair the tail, check the reading settings match the first run's, note this run."""
        self.check()
        resumed = Resumed()
        if self.status_path.exists():
            resumed = self._resume(identity)
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        self._out_fd = os.open(self.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._status_fd = os.open(self.status_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.end = os.fstat(self._out_fd).st_size
        line = {"run": {"format": FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "identity": identity,
                        **run}}
        _write_all(self._status_fd, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        return resumed

    def _resume(self, identity: dict) -> Resumed:
        resumed = Resumed()
        data = self.status_path.read_bytes()
        lines, complete = _split_lines(data)
        if complete < len(data):
            os.truncate(self.status_path, complete)
            resumed.partial_journal_line = True
        committed = 0
        first_run = None
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if "run" in rec:
                    first_run = first_run or rec["run"]
                    continue
                key, status, end = rec["key"], rec["status"], int(rec["end"])
            except (ValueError, KeyError, TypeError) as err:
                raise TunelabError("not a synth qa journal line", file=self.status_path, line=lineno) from err
            if status not in ("done", "failed"):
                raise TunelabError(f"unknown status {status!r}", file=self.status_path, line=lineno,
                                   field="status")
            resumed.finished[key] = rec
            committed = max(committed, end)
        if first_run is not None and first_run.get("format") != FORMAT:
            raise TunelabError(f"unknown journal format {first_run.get('format')!r} (expected {FORMAT})",
                               file=self.status_path)
        if first_run is not None and first_run.get("identity") != identity:
            before = first_run.get("identity") or {}
            diff = ", ".join(f"{k} {before.get(k)!r} then, {v!r} now" for k, v in identity.items()
                             if before.get(k) != v)
            raise TunelabError(f"the articles were read differently when this output was started ({diff}): "
                               "rerun with the same reading settings, or choose another output file",
                               file=self.status_path)
        size = self.out.stat().st_size if self.out.exists() else 0
        if size < committed:
            raise TunelabError(f"holds {size} bytes, its journal recorded {committed}: the file was cut or "
                               "edited; choose another output file", file=self.out)
        if size > committed:
            with self.out.open("rb") as f:
                f.seek(committed)
                tail = f.read()
            resumed.dropped_bytes = len(tail)
            resumed.dropped_lines = tail.count(b"\n") + (not tail.endswith(b"\n"))
            os.truncate(self.out, committed)
        if committed:
            with self.out.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    try:
                        resumed.questions.append(json.loads(raw)["question"])
                    except (ValueError, KeyError, TypeError) as err:
                        raise TunelabError("not a {question, answer, source_id} line", file=self.out,
                                           line=lineno) from err
            resumed.pairs = len(resumed.questions)
        return resumed

    def commit(self, article: Article, pairs: list[tuple[str, str]], status: str, attempts: int,
               reason: str | None = None) -> None:
        """Append the article's pairs, then its status line (see the module docstring for why in that order)."""
        assert self._out_fd is not None and self._status_fd is not None, "open() first"
        extra = {} if article.chunk is None else {"chunk": article.chunk}
        data = "".join(json.dumps({"question": q, "answer": a, "source_id": article.source_id, **extra},
                                  ensure_ascii=False) + "\n" for q, a in pairs).encode("utf-8")
        if data:
            _write_all(self._out_fd, data)
            self.end += len(data)
        line = {"key": article.key, "status": status, "pairs": len(pairs), "attempts": attempts, "end": self.end}
        if reason:
            line["reason"] = reason
        _write_all(self._status_fd, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        for fd in (self._out_fd, self._status_fd):
            if fd is not None:
                os.close(fd)
        self._out_fd = self._status_fd = None
