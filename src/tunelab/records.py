"""Reading and writing record files (JSON array or JSONL) with errors that name file, line and field."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tunelab.errors import TunelabError

# JSONL records end at "\r\n", "\r" or "\n", which JSON strings cannot hold raw; the other line breaks of
# str.splitlines (U+2028, U+2029, U+0085) can be inside a string (json.dumps(ensure_ascii=False) leaves them).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# Binary files people hand a text reader by mistake, by the bytes they start with. Without this check an arena's
# votes.db read as JSONL said "not UTF-8 text (bad byte 0xce at offset 106)", which names no mistake.
# (first bytes, last bytes, kind, what it is, what to do): Parquet and Arrow files end as they start, so a text
# that happens to begin "PAR1" stays text.
BINARY_KINDS = (
    (b"SQLite format 3\x00", b"", "sqlite", "a SQLite database", ""),
    (b"\x1f\x8b", b"", "gzip", "a gzip file", " (decompress it first)"),
    (b"PAR1", b"PAR1", "parquet", "a Parquet file", ""),
    (b"ARROW1\x00\x00", b"ARROW1", "arrow", "an Arrow file", ""),
    (b"PK\x03\x04", b"", "zip", "a zip archive", ""),
    (b"PK\x05\x06", b"", "zip", "a zip archive", ""),
)


class NotTextError(TunelabError):
    """A text reader was given a binary file of a kind `BINARY_KINDS` knows; `found` names the kind (`sqlite`,
    `gzip`, …), so a verb that takes that kind under another flag can say which (`data prefs`: `--arena`)."""

    def __init__(self, message: str, *, file: str | Path, found: str):
        super().__init__(message, file=file)
        self.found = found


def read_text(path: str | Path, expected: str = "text") -> str:
    """Read a UTF-8 text file; a missing file, a binary file (`BINARY_KINDS`) or bad bytes become a TunelabError
    naming the file (and the line); `expected` says what the file should have been ("JSON or JSONL text")."""
    p = Path(path)
    if not p.exists():
        raise TunelabError("file not found", file=p)
    if p.is_dir():
        raise TunelabError("expected a file, found a directory", file=p)
    return decode_text(p.read_bytes(), p, expected)


def decode_text(data: bytes, name: str | Path, expected: str = "text") -> str:
    """UTF-8 bytes (a BOM dropped) as text. Bytes of a known binary kind are a `NotTextError` ("a SQLite database,
    not text"), checked before the encoding; other bad bytes a TunelabError naming `name` and the line."""
    for head, tail, found, what, advice in BINARY_KINDS:
        if data.startswith(head) and data.endswith(tail) and len(data) >= len(head) + len(tail):
            raise NotTextError(f"{what}, not {expected}{advice}", file=name, found=found)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TunelabError(f"not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset {e.start})",
                           file=name, line=line) from e


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line, split where a JSONL record can end (not at U+2028 and the
    other breaks `str.splitlines` also takes, which a JSON string may hold)."""
    for lineno, line in enumerate(_LINE_BREAK.split(text), start=1):
        if line.strip():
            yield lineno, line


def read_json(path: str | Path) -> tuple[str, Any]:
    """(text, parsed document) of one JSON file; malformed JSON names the file, line and column.

    The text comes back too, for callers that look up where an element sits to name its line in errors.
    """
    text = read_text(path, "JSON text")
    return text, parse_json(text, path)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a config.json, an index): unreadable bytes, malformed JSON or another
    kind of document is a TunelabError naming the file."""
    _, document = read_json(path)
    if not isinstance(document, dict):
        raise TunelabError(f"expected a JSON object, got {type(document).__name__}", file=path)
    return document


def parse_json(text: str, path: str | Path, line: int | None = None) -> Any:
    """json.loads with every failure as a TunelabError: malformed JSON names its line and column; JSON nested
    too deeply for Python's recursion or holding an integer too long to convert names the file (or `line`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = e.lineno if line is None else line
        raise TunelabError(f"malformed JSON ({e.msg}, column {e.colno})", file=path, line=where) from e
    except RecursionError as err:
        raise TunelabError("JSON nested too deeply to read", file=path, line=line) from err
    except ValueError as e:  # int() of a literal longer than sys.get_int_max_str_digits()
        raise TunelabError(f"unreadable JSON ({str(e).split(';')[0]})", file=path, line=line) from e


def read_yaml(path: str | Path) -> tuple[Any, str]:
    """(the YAML document in `path`, the file's text); malformed YAML is an error naming the file and line."""
    import yaml
    text = read_text(path, "YAML text")
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TunelabError(f"malformed YAML ({getattr(e, 'problem', None) or e})", file=path,
                           line=mark.line + 1 if mark else None) from e


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, record) from a JSON array file or a JSONL file.

    The format is sniffed from the first non-blank character: '[' means one JSON array, anything else
    JSONL. Line numbers for array files are those of each element's first character.
    """
    p = Path(path)
    text = read_text(p, "JSON or JSONL text")
    stripped = text.lstrip()
    if not stripped:
        raise TunelabError("file is empty", file=p)
    if stripped.startswith("["):
        yield from _iter_array(p, text)
        return
    for lineno, line in iter_lines(text):
        rec = parse_json(line, p, lineno)
        if not isinstance(rec, dict):
            raise TunelabError(f"expected a JSON object, got {type(rec).__name__}", file=p, line=lineno)
        yield lineno, rec


def _iter_array(p: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    decoder = json.JSONDecoder()
    data = parse_json(text, p)
    if not isinstance(data, list):
        raise TunelabError("expected a JSON array of objects", file=p, line=1)
    # Recover each element's line by walking the array with raw_decode, counting newlines since the
    # previous element only (counting from the start each time made an 800k-record file take hours).
    pos = text.index("[") + 1
    lineno, counted = 1, 0
    for item in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        lineno += text.count("\n", counted, pos)
        counted = pos
        _, pos = decoder.raw_decode(text, pos)
        if not isinstance(item, dict):
            raise TunelabError(f"expected a JSON object, got {type(item).__name__}", file=p, line=lineno)
        yield lineno, item


def prompt_records(jsonl: str, path: str | Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line, record, prompt) of each line of a JSONL file of prompts (the instructions and forms tasks'): a JSON
    object with a non-empty `prompt`, else a TunelabError naming file, line and field."""
    for line, text in iter_lines(jsonl):
        rec = parse_json(text, path, line)
        if not isinstance(rec, dict):
            raise TunelabError(f"expected a JSON object, got {type(rec).__name__}", file=path, line=line)
        prompt = require_str(rec, "prompt", path, line)
        if not prompt.strip():
            raise TunelabError("empty prompt", file=path, line=line, field="prompt")
        yield line, rec, prompt


def require_str(rec: dict[str, Any], field: str, path: str | Path, line: int) -> str:
    """Return rec[field] as a string, or raise a TunelabError naming file, line and field."""
    if field not in rec:
        raise TunelabError("missing field", file=path, line=line, field=field)
    value = rec[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TunelabError(f"expected a string, got {type(value).__name__}", file=path, line=line,
                           field=field)
    if isinstance(value, str) and (at := lone_surrogate(value)) is not None:
        raise TunelabError(f"not valid Unicode text (a lone surrogate at character {at})", file=path, line=line,
                           field=field)
    return str(value)


def lone_surrogate(text: str) -> int | None:
    """Where `text` holds a lone surrogate (a JSON escape such as "\\ud800" outside a pair: no encoder takes
    it), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as UTF-8 JSONL atomically (temp file + rename). Returns the number written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically, UTF-8, indented."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_dir(out: str | Path) -> Path:
    """A fresh `OUT.tmp-<pid>` beside `out` to build a directory in before renaming it into place; leftovers
    of earlier builds whose process is gone (killed mid-way) are removed first, so they never pile up."""
    out = Path(out)
    for old in out.parent.glob(f"{out.name}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def building_dir(out: str | Path) -> Iterator[Path]:
    """Build the directory `out` atomically: the block writes into a fresh staging directory (`staging_dir`),
    which is renamed into place when the block ends and removed if it raises, so a killed or failed build
    never leaves a directory that looks finished. The caller refuses an existing `out` first (an empty one
    is replaced)."""
    out = Path(out)
    tmp = staging_dir(out)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# What the writers of checkpoints raise when the disk refuses, besides an OSError: torch.save a RuntimeError
# ("unexpected pos 576 vs 534", from "basic_ios::clear: iostream error"; "file write failed"), safetensors a
# SafetensorError ("I/O error: No space left on device (os error 28)"), tokenizers' Rust an Exception ("(os error 28)").
_WRITE_REFUSED = re.compile(r"os error \d+|iostream error|unexpected pos \d+|write failed|failed writing|"
                            r"No space left|quota exceeded|I/O error|Input/output error", re.IGNORECASE)


def write_refusal(e: BaseException) -> str | None:
    """Why the file system refused a write, when `e` (or an exception it came from) says so: the OS's words
    ("No space left on device") where there are any; None when `e` is not a refused write."""
    seen, found = set(), None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        m = re.search(r"([A-Z][\w ]*) \(os error \d+\)", str(e))
        if m:
            return m.group(1)
        if isinstance(e, OSError) or _WRITE_REFUSED.search(str(e)):
            found = "the write failed"  # torch's words ("unexpected pos 576 vs 534") would tell a user nothing
        e = e.__cause__ or e.__context__
    return found


def free_space(path: str | Path) -> str:
    """The free space of the file system holding `path` (or its nearest existing parent), e.g. '12.0 KiB'."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    n = float(shutil.disk_usage(p).free)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cache_root() -> Path:
    """Where tunelab keeps what it makes once and reuses (converted bases, the base's own answers):
    $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab (~/.cache/tunelab)."""
    import os
    return Path(os.environ.get("TUNELAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "tunelab")
