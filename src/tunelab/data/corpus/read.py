"""Reading a pretraining corpus as a stream of raw documents, whatever its files look like.

Inputs are files or folders (walked recursively, sorted, so the order is stable across machines):

    .jsonl   one JSON object per line; the text is the `text_field`, optional id/title fields are kept
    .json    a JSON array of such objects, parsed element by element (a .json that does not start with
             `[` is read as JSONL, as many "JSON" dumps are)
    .txt     documents separated by blank lines
    any of them + .gz, decompressed on the fly
    .parquet / .arrow / .csv   tables, and `save_to_disk` folders: a row is a document (the `text_field` column,
             id/title columns kept); `hf:NAME` a Hugging Face hub dataset (offline: its local cache). All read
             through `datasets` streaming, a batch of rows at a time (`tunelab.data.hf`); a row's number is its
             "line"

Memory stays bounded by the largest document, never the file: JSONL and text are read line by line, JSON
arrays through `raw_decode` over a sliding buffer. A bad line (malformed JSON, a missing or non-string
text field, a non-scalar id/title, bytes that are not UTF-8, a lone surrogate escape such as "\\ud800"
that no tokenizer accepts) stops the read with `file:line` and the field, unless `skip_bad`: then it is
counted in a `BadLines`, which the caller must pass, so no line is ever dropped silently. In a JSON array
only bad *elements* can be skipped: broken array syntax leaves no next element to resume at, so it always
stops the read (JSONL resumes at the next line).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import os
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from tunelab.errors import TunelabError
from tunelab.records import lone_surrogate

SUFFIXES = (".jsonl", ".json", ".txt")
GZ_SUFFIXES = tuple(s + ".gz" for s in SUFFIXES)
TABLE_SUFFIXES = (".parquet", ".arrow", ".csv")
SAVED, HUB = "save_to_disk", "hub"     # the kinds of a saved dataset folder and a hub dataset among the inputs
HUB_PREFIX = "hf:"
MAX_BAD_EXAMPLES = 10
CHUNK_CHARS = 1 << 18  # JSON arrays are decoded 256 KB at a time
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\r\n]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what undecodable bytes become under surrogateescape


@dataclass
class RawDoc:
    """One document as read: its text and where it came from (line = first line of the document)."""
    text: str
    file: str
    line: int
    id: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class HubInput:
    """A Hugging Face hub dataset among the inputs (`hf:NAME`): its `split` streamed through `datasets`, offline
    from the local cache."""
    name: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.name + (f" ({self.config})" if self.config else "") + f" [{self.split}]"

    def as_meta(self) -> dict:
        return {"hf": self.name, "config": self.config, "split": self.split, "revision": self.revision, "bytes": 0}


Input = Path | HubInput


def with_hub_options(inputs: Iterable[str | Path], config: str | None, split: str) -> list[str | Path | HubInput]:
    """`inputs` with each `hf:NAME` as the HubInput of that configuration and split (the command line's
    --hf-config / --hf-split)."""
    return [HubInput(i[len(HUB_PREFIX):], config, split) if isinstance(i, str) and i.startswith(HUB_PREFIX)
            and len(i) > len(HUB_PREFIX) else i for i in inputs]


def input_bytes(item: Input) -> int:
    """An input's size on disk (a saved dataset folder: its files'; a hub dataset: 0, not known before reading)."""
    if isinstance(item, HubInput):
        return 0
    if item.is_dir():
        return sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
    return item.stat().st_size


def input_of_meta(item: dict) -> Input:
    """An input as a corpus's meta.json records it (`HubInput.as_meta`, or {path, bytes})."""
    if "hf" in item:
        return HubInput(item["hf"], item.get("config"), item.get("split") or "train", item.get("revision"))
    return Path(item["path"])


def _saved(path: Path) -> bool:
    from tunelab.data.hf import is_saved_dataset    # no `datasets` import: it looks for the files save_to_disk writes
    return is_saved_dataset(path)


@dataclass
class BadLines:
    """Lines skipped under `skip_bad`: how many, and the first few as "file:line: reason"."""
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, file: str, line: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_BAD_EXAMPLES:
            self.examples.append(f"{file}:{line}: {reason}")

    def merge(self, other: BadLines) -> None:
        """Add the lines another reader (a worker's) skipped."""
        self.count += other.count
        self.examples += other.examples[:MAX_BAD_EXAMPLES - len(self.examples)]


@dataclass
class JsonlChunk:
    """Whole lines of a JSONL file, still bytes, with the number of the first: the main process only cuts
    the file at newlines, so parsing happens wherever the chunk is sent (a worker process)."""
    file: str
    first_line: int
    data: bytes


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for s in GZ_SUFFIXES + SUFFIXES + TABLE_SUFFIXES:
        if name.endswith(s):
            return s.removesuffix(".gz")
    return None


ALL_SUFFIXES = ", ".join(SUFFIXES) + " (optionally .gz), " + ", ".join(TABLE_SUFFIXES)


def list_inputs(inputs: Iterable[str | Path | HubInput], hf_config: str | None = None,
                hf_split: str = "train") -> list[Input]:
    """The corpus files named by `inputs`: files as given, folders walked recursively and sorted; a
    `save_to_disk` folder is one input, and `hf:NAME` a hub dataset (its `hf_config`, `hf_split`).

    A file named twice (directly and through its folder) is read once. Inside a folder, hidden files and
    folders (".name") and prepared corpus directories (holding train.bin, finished or not) are skipped,
    so a corpus written next to its sources is not read back as input. A missing input, an unsupported
    file named directly, or no file at all is an error.
    """
    inputs = list(inputs)
    out: list[Input] = []
    seen: set = set()
    for item in inputs:
        if isinstance(item, str) and item.startswith(HUB_PREFIX):
            item = HubInput(item[len(HUB_PREFIX):], hf_config, hf_split)
            if not item.name:
                raise TunelabError("hf: needs a dataset name (hf:NAME)")
        if isinstance(item, HubInput):
            if item not in seen:
                seen.add(item)
                out.append(item)
            continue
        p = Path(item)
        if p.is_dir() and _saved(p):
            found = [p]
        elif p.is_dir():
            if (p / "train.bin").exists():
                raise TunelabError("a prepared corpus directory, not corpus input: name the source files", file=p)
            found = sorted(_walk(p))
        elif p.is_file():
            if not _suffix(p):
                raise TunelabError(f"unsupported corpus file (expected {ALL_SUFFIXES})", file=p)
            found = [p]
        else:
            raise TunelabError("input not found", file=p)
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    if not out:
        raise TunelabError(f"no corpus files ({ALL_SUFFIXES}, save_to_disk folders) found in "
                           + ", ".join(str(i) for i in inputs))
    return out


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        if "train.bin" in files and folder != str(root):
            dirs[:] = []
            continue
        if folder != str(root) and _saved(Path(folder)):   # one input, not its arrow files one by one
            dirs[:] = []
            yield Path(folder)
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and _suffix(Path(name)):
                yield Path(folder, name)


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb", buffering=1 << 20)


class _Reader:
    """Turns records into RawDocs and bad lines into errors or counts, for one file."""

    def __init__(self, path: Path, text_field: str, id_field: str | None, title_field: str | None,
                 skip_bad: bool, bad: BadLines | None):
        self.file = str(path)
        self.hint = ""
        self.text_field, self.id_field, self.title_field = text_field, id_field, title_field
        self.skip_bad, self.bad = skip_bad, bad

    def fail(self, line: int, reason: str, field_name: str | None = None) -> None:
        """A bad line: raise, or count it when skipping."""
        if not self.skip_bad:
            raise TunelabError(reason, file=self.file, line=line, field=field_name)
        assert self.bad is not None
        self.bad.add(self.file, line, f"field '{field_name}': {reason}" if field_name else reason)

    def doc(self, rec: object, line: int, escapes: bool) -> RawDoc | None:
        """A RawDoc from a parsed record; `escapes`: its source holds "\\ud"/"\\uD", so a lone surrogate may be."""
        if not isinstance(rec, dict):
            return self.fail(line, f"expected a JSON object, got {type(rec).__name__}")
        text = rec.get(self.text_field)
        if not isinstance(text, str):
            reason = "missing" if self.text_field not in rec else \
                f"expected a string, got {'null' if text is None else type(text).__name__}"
            return self.fail(line, reason, self.text_field)
        if escapes and lone_surrogate(text) is not None:
            return self.fail(line, "a lone surrogate escape (\\ud800-\\udfff not in a pair) is not text",
                             self.text_field)
        meta = []
        for name in (self.id_field, self.title_field):
            value = rec.get(name) if name else None
            if isinstance(value, (dict, list)):
                return self.fail(line, f"expected a string or number, got {type(value).__name__}", name)
            meta.append(value if value is None or isinstance(value, str) else
                        str(value) if type(value) is int else json.dumps(value))  # 1.5, true, NaN as in JSON
        return RawDoc(text, self.file, line, meta[0], meta[1])

    def table(self, item: Input, kind: str) -> Iterator[RawDoc]:
        """The rows of a table file, saved dataset or hub dataset, streamed a batch at a time."""
        from tunelab.data.hf import DatasetSpec, corpus_rows
        spec = (DatasetSpec(item.name, item.config, item.split, item.revision, streaming=True) if kind == HUB
                else DatasetSpec(str(item), streaming=True))
        for row, rec in corpus_rows(spec, self.text_field, [self.id_field, self.title_field]):
            doc = self.doc(rec, row, False)    # Arrow strings are valid UTF-8: no lone surrogate
            if doc is not None:
                yield doc

    def jsonl(self, f: IO[bytes], first_line: int = 1) -> Iterator[RawDoc]:
        for lineno, raw in enumerate(f, start=first_line):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            if not raw or raw.isspace():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.fail(lineno, f"not UTF-8 text (bad byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                self.fail(lineno, f"malformed JSON ({e.msg}, column {e.colno}){self.hint}")
                continue
            doc = self.doc(rec, lineno, "\\ud" in text or "\\uD" in text)
            if doc is not None:
                yield doc

    def txt(self, f: IO[bytes]) -> Iterator[RawDoc]:
        """Blank-line-separated documents; a block with undecodable bytes is one bad document."""
        block: list[str] = []
        start, broken = 0, None
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw.decode("utf-8", "replace")
                if broken is None:
                    broken = (lineno, f"not UTF-8 text (bad byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            if line and not line.isspace():
                if not block:
                    start = lineno
                block.append(line)
                continue
            if block:
                yield from self._txt_block(block, start, broken)
            block, broken = [], None
        if block:
            yield from self._txt_block(block, start, broken)

    def _txt_block(self, block: list[str], start: int, broken: tuple[int, str] | None) -> Iterator[RawDoc]:
        if broken is not None:
            self.fail(*broken)
            return
        text = "".join(block)
        yield RawDoc(text[:-1] if text.endswith("\n") else text, self.file, start)

    def json_array(self, f: IO[bytes]) -> Iterator[RawDoc]:
        """A JSON array element by element, over a buffer that holds about one element at a time.

        Once a byte that is not UTF-8 turns up, decoding goes on with surrogateescape, so the bad bytes
        survive into the buffer as U+DC80..U+DCFF (which escaped JSON text can never contain raw) and mark
        their element as bad; until then no element is searched for them.
        """
        decoder = codecs.getincrementaldecoder("utf-8")()
        buf, pos, line, counted, eof, dirty = "", 0, 1, 0, False, False

        def more(n: int = CHUNK_CHARS) -> bool:
            nonlocal buf, pos, counted, eof, decoder, dirty
            if eof:
                return False
            line_at(pos)
            data = f.read(n)
            eof = not data
            state = decoder.getstate()
            try:
                text = decoder.decode(data, final=eof)
            except UnicodeDecodeError:
                decoder, dirty = codecs.getincrementaldecoder("utf-8")("surrogateescape"), True
                decoder.setstate(state)
                text = decoder.decode(data, final=eof)
            buf = buf[pos:] + text
            counted -= pos
            pos = 0
            return True

        def line_at(i: int) -> int:
            nonlocal line, counted
            if i > counted:
                line += buf.count("\n", counted, i)
                counted = i
            return line

        def skip_ws() -> None:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or not more():
                    return

        skip_ws()
        if buf.startswith("\ufeff", pos):
            pos += 1
            skip_ws()
        if not buf.startswith("[", pos):  # not an array: JSON lines in a .json file
            self.hint = "; a .json file holds one JSON array, or one JSON object per line"
            f.seek(0)
            yield from self.jsonl(f)
            return
        pos += 1
        skip_ws()
        if buf.startswith("]", pos):
            pos += 1
        else:
            while True:
                start = pos
                try:
                    rec, end = _DECODER.raw_decode(buf, pos)
                    if end == len(buf) and not eof:  # a number cut by the buffer end would parse short
                        raise json.JSONDecodeError("cut", buf, end)
                except json.JSONDecodeError as e:
                    cut = e.pos >= len(buf) - 16 or e.msg.startswith("Unterminated string")
                    if cut and more(max(CHUNK_CHARS, len(buf))):  # grow geometrically: one parse per doubling
                        continue
                    raise TunelabError(f"malformed JSON ({e.msg})", file=self.file, line=line_at(e.pos)) from e
                lineno = line_at(start)
                pos = end
                escaped = dirty and _ESCAPED_BYTE.search(buf, start, end)
                if escaped:
                    self.fail(line_at(escaped.start()), "not UTF-8 text")
                else:
                    escapes = buf.find("\\ud", start, end) >= 0 or buf.find("\\uD", start, end) >= 0
                    doc = self.doc(rec, lineno, escapes)
                    if doc is not None:
                        yield doc
                skip_ws()
                if buf.startswith(",", pos):
                    pos += 1
                    skip_ws()
                    continue
                if buf.startswith("]", pos):
                    pos += 1
                    break
                what = "end of file" if pos >= len(buf) else repr(buf[pos])
                raise TunelabError(f"malformed JSON array (expected ',' or ']', found {what})",
                                   file=self.file, line=line_at(pos))
        skip_ws()
        if pos < len(buf):
            raise TunelabError("malformed JSON (extra data after the array)", file=self.file, line=line_at(pos))


def iter_documents(paths: Iterable[str | Path], text_field: str = "text", id_field: str | None = "id",
                   title_field: str | None = "title", skip_bad: bool = False,
                   bad: BadLines | None = None) -> Iterator[RawDoc]:
    """Stream the documents of `paths` (files, as from `list_inputs`) in order.

    With `skip_bad`, bad lines are counted into `bad` (required then) instead of raising TunelabError.
    """
    for path, kind in _checked(paths, skip_bad, bad):
        reader = _Reader(path, text_field, id_field, title_field, skip_bad, bad)
        if kind in TABLES:
            yield from reader.table(path, kind)
            continue
        with _reading(path) as f:
            if kind == ".jsonl":
                yield from reader.jsonl(f)
            elif kind == ".txt":
                yield from reader.txt(f)
            else:
                yield from reader.json_array(f)


def iter_work(paths: Iterable[str | Path], chunk_chars: int, text_field: str = "text",
              id_field: str | None = "id", title_field: str | None = "title", skip_bad: bool = False,
              bad: BadLines | None = None) -> Iterator[JsonlChunk | list[RawDoc]]:
    """The documents of `paths` in order, in pieces of about `chunk_chars` characters of text to hand out.

    A JSONL file comes as `JsonlChunk`s of whole lines (bytes, cut at newlines here and parsed by
    `parse_chunk` where the work is done, so the process handing out work does little); other files come
    as lists of RawDocs read here (their bad lines go to `bad`).
    """
    for path, kind in _checked(paths, skip_bad, bad):
        reader = _Reader(path, text_field, id_field, title_field, skip_bad, bad)
        if kind in TABLES:
            yield from _chunked(reader.table(path, kind), chunk_chars)
            continue
        with _reading(path) as f:
            if kind == ".jsonl":
                yield from _cut_lines(f, str(path), chunk_chars)
                continue
            yield from _chunked(reader.txt(f) if kind == ".txt" else reader.json_array(f), chunk_chars)


def _chunked(docs: Iterable[RawDoc], chunk_chars: int) -> Iterator[list[RawDoc]]:
    """Documents in lists of about `chunk_chars` characters."""
    chunk: list[RawDoc] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text)
        if chars >= chunk_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def parse_chunk(chunk: JsonlChunk, text_field: str = "text", id_field: str | None = "id",
                title_field: str | None = "title", skip_bad: bool = False) -> tuple[list[RawDoc], BadLines]:
    """The documents of a JSONL chunk and the lines skipped under `skip_bad` (otherwise a bad line raises)."""
    bad = BadLines()
    reader = _Reader(Path(chunk.file), text_field, id_field, title_field, skip_bad, bad)
    reader.file = chunk.file
    return list(reader.jsonl(io.BytesIO(chunk.data), chunk.first_line)), bad


def _cut_lines(f: IO[bytes], file: str, chunk_chars: int) -> Iterator[JsonlChunk]:
    """Whole lines of `f`, 3 x `chunk_chars` bytes at a time (CJK text is ~3 bytes a character in UTF-8);
    a line longer than that is one chunk of its own, read on until its newline."""
    size = 3 * chunk_chars
    line, pending = 1, []
    while True:
        data = f.read(size)
        if not data:
            if pending:
                yield JsonlChunk(file, line, b"".join(pending))
            return
        cut = data.rfind(b"\n") + 1
        if not cut:
            pending.append(data)
            continue
        chunk = b"".join([*pending, data[:cut]]) if pending else data[:cut]
        pending = [data[cut:]] if cut < len(data) else []
        yield JsonlChunk(file, line, chunk)
        line += chunk.count(b"\n")


TABLES = (*TABLE_SUFFIXES, SAVED, HUB)     # the kinds read through `datasets`


def _checked(paths: Iterable[str | Path | HubInput], skip_bad: bool,
             bad: BadLines | None) -> Iterator[tuple[Input, str]]:
    """(input, kind) of each file, saved dataset or hub dataset; another folder or an unsupported file is an error."""
    if skip_bad and bad is None:
        raise ValueError("skip_bad needs a BadLines to count the skipped lines in")
    for item in paths:
        if isinstance(item, HubInput):
            yield item, HUB
            continue
        path = Path(item)
        kind = _suffix(path)
        if path.is_dir():
            if _saved(path):
                yield path, SAVED
                continue
            raise TunelabError("a folder, not a corpus file (list folders with list_inputs)", file=path)
        if kind is None:
            raise TunelabError(f"unsupported corpus file (expected {ALL_SUFFIXES})", file=path)
        if kind in TABLES and not path.is_file():
            raise TunelabError("input not found", file=path)
        yield path, kind


@contextmanager
def _reading(path: Path) -> Iterator[IO[bytes]]:
    """The file open for reading; a missing, truncated or corrupt (.gz) file is a one-line error."""
    try:
        with _open(path) as f:
            yield f
    except FileNotFoundError as err:
        raise TunelabError("input not found", file=path) from err
    except (OSError, EOFError, zlib.error) as e:
        raise TunelabError(f"cannot read: {e}", file=path) from e


def split_of(text: str, val_fraction: float, seed: int) -> str:
    """'train' or 'val' for a document, decided by its text alone (blake2b of seed and text).

    The same document lands in the same split on every run, machine and worker, and an exact duplicate can
    never sit on both sides of the split.
    """
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return "val" if int.from_bytes(h.digest(), "little") / 2.0 ** 64 < val_fraction else "train"
