"""The on-disk form of a prepared pretraining corpus: flat token files and a block index, memory-mapped.

A corpus directory (written by `tunelab data corpus`, read by training, `ppl` and `--verify/--show`):

    meta.json         format, dtype, block size, EOT id, tokenizer identity, cleaning rules, inputs, summary
    tokenizer/        the tokenizer the blocks were encoded with (a Hugging Face tokenizer directory)
    docs.jsonl        one line per kept document: {"doc", "id", "title", "file", "line", "split", "chars", "blocks"}
    train.bin         every train block's tokens laid end to end (uint16 if the vocabulary fits, else uint32)
    train.idx.npy     one row per block: offset (int64, in tokens), length (int32), doc (int32, docs.jsonl index)
    val.bin, val.idx.npy   the same for the validation split (split by document)

Every block ends with the EOT token. `meta.json` is written last and the directory appears by one rename,
so a directory with `meta.json` is complete; one without it is an interrupted preparation.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from tunelab.errors import TunelabError
from tunelab.records import parse_json, read_json

FORMAT = "tunelab-corpus/1"
SPLITS = ("train", "val")
INDEX_DTYPE = [("offset", "<i8"), ("length", "<i4"), ("doc", "<i4")]


def token_dtype(vocab_size: int) -> str:
    """uint16 holds ids < 65,536; a larger vocabulary needs uint32 (never a silent wrap-around)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


FLUSH_TOKENS = 1 << 20     # tokens a SplitWriter gathers at most before it writes them


class SplitWriter:
    """Appends blocks of one split to `<split>.bin` and remembers their index rows (small: 16 bytes a block).

    Documents arrive one by one, mostly one block each: they are gathered and written, checked and indexed
    in batches (the documents of one chunk, at most `FLUSH_TOKENS` tokens), so the per-document cost is a
    few list appends, and memory never holds more than one chunk's tokens.
    """

    def __init__(self, directory: Path, split: str, dtype: str):
        import numpy as np
        self.np = np
        self.dtype = np.dtype(dtype)
        self.max_id = int(np.iinfo(self.dtype).max)
        self.bin_path = directory / f"{split}.bin"
        self.idx_path = directory / f"{split}.idx.npy"
        self.f: BinaryIO = self.bin_path.open("wb")
        # typed arrays, not lists: 16 bytes a block, so a corpus of millions of blocks stays small in memory
        self.offsets = array("q")
        self.lengths = array("i")
        self.docs = array("i")
        self.tokens = 0
        self.documents = 0      # documents come in order: a new one is a change of `doc`
        self._last_doc: int | None = None
        self._pending: tuple[list, list, list] = ([], [], [])   # tokens, block lengths, doc of each document
        self._pending_tokens = 0
        self._base = None

    def add_blocks(self, tokens, lengths, doc: int) -> None:
        """Several consecutive blocks of one document: `tokens` laid end to end, `lengths` each (integer arrays
        or lists)."""
        base = getattr(tokens, "base", None)
        if base is not self._base:     # a view keeps its whole chunk alive: write what the last chunk gave first
            self._flush()
            self._base = base
        tok, lens, docs = self._pending
        tok.append(tokens)
        lens.append(lengths)
        docs.append(doc)
        if doc != self._last_doc:
            self.documents += 1
            self._last_doc = doc
        self._pending_tokens += len(tokens)
        if self._pending_tokens >= FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        np = self.np
        tok, lens, docs = self._pending
        if not docs:
            return
        arr = np.concatenate(tok)
        if arr.size and arr.dtype.itemsize > self.dtype.itemsize and int(arr.max()) > self.max_id:
            raise ValueError(f"token id out of range for {self.dtype}")
        self.f.write(np.ascontiguousarray(arr, dtype=self.dtype).data)
        lengths = np.concatenate(lens).astype(np.int64)
        ends = self.tokens + np.cumsum(lengths)
        self.offsets.frombytes((ends - lengths).tobytes())
        self.lengths.frombytes(lengths.astype(np.int32).tobytes())
        self.docs.frombytes(np.repeat(np.asarray(docs, dtype=np.int32), [len(x) for x in lens]).tobytes())
        self.tokens += int(lengths.sum())
        self._pending = ([], [], [])
        self._pending_tokens = 0

    def close(self) -> dict[str, int]:
        self._flush()
        self.f.close()
        index = self.np.zeros(len(self.offsets), dtype=INDEX_DTYPE)
        index["offset"] = self.np.frombuffer(self.offsets, dtype=self.np.int64)
        index["length"] = self.np.frombuffer(self.lengths, dtype=self.np.int32)
        index["doc"] = self.np.frombuffer(self.docs, dtype=self.np.int32)
        self.np.save(self.idx_path, index)
        return {"blocks": len(self.offsets), "tokens": self.tokens, "documents": self.documents}


class CorpusBlocks:
    """One split of a prepared corpus, memory-mapped: `len()` blocks, `block(i)` their token ids."""

    def __init__(self, directory: str | Path, split: str = "train"):
        import numpy as np
        self.dir = Path(directory)
        self.meta = read_meta(self.dir)
        if split not in SPLITS:
            raise TunelabError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})", file=self.dir)
        self.split = split
        self.dtype = np.dtype(self.meta["dtype"])
        self.eot_id: int = self.meta["eot_id"]
        self.block_size: int = self.meta["block_size"]
        self.vocab_size: int = self.meta["vocab_size"]
        self.bin_path = bin_path = self.dir / f"{split}.bin"
        self.index = _read_index(self.dir / f"{split}.idx.npy")
        if not bin_path.is_file():
            raise TunelabError(f"{split}.bin is missing: the corpus is damaged; prepare it again", file=bin_path)
        n = bin_path.stat().st_size // self.dtype.itemsize
        expected = int(self.index["length"].sum()) if len(self.index) else 0
        if n != expected:
            raise TunelabError(f"{split}.bin holds {n} tokens, the index expects {expected}: the corpus is "
                               "damaged; prepare it again", file=bin_path)
        if len(self.index) and (int(self.index["offset"].min()) < 0 or int(self.index["length"].min()) < 1
                                or int((self.index["offset"] + self.index["length"]).max()) > n):
            raise TunelabError(f"{split}.idx.npy points outside {split}.bin: the corpus is damaged; prepare it "
                               "again", file=self.dir / f"{split}.idx.npy")
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
        self.lengths = self.index["length"]

    def __len__(self) -> int:
        return len(self.index)

    def block(self, i: int):
        """Token ids of block i (a read-only view into the memory map; EOT last)."""
        row = self.index[i]
        ids = self.tokens[int(row["offset"]): int(row["offset"]) + int(row["length"])]
        if int(ids.max()) >= self.vocab_size:  # a damaged file: the model's embedding would fail on it
            raise self._outside(i, int(ids.max()))
        return ids

    def _outside(self, block, token_id: int) -> TunelabError:
        return TunelabError(f"block {block} holds token id {token_id}, outside the vocabulary of {self.vocab_size}: "
                            "the corpus is damaged; prepare it again", file=self.bin_path)

    def check_ids(self, chunk: int = 1 << 24) -> None:
        """Every token id is inside the vocabulary (read in chunks: a damaged file stops a run before it
        starts, not when a batch first draws the block)."""
        import numpy as np
        for start in range(0, len(self.tokens), chunk):
            part = np.asarray(self.tokens[start: start + chunk])
            if int(part.max()) >= self.vocab_size:
                at = start + int(np.argmax(part >= self.vocab_size))
                block = np.flatnonzero((self.index["offset"] <= at) & (at < self.index["offset"] + self.lengths))
                raise self._outside(int(block[0]) if len(block) else "?", int(self.tokens[at]))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"


def read_tokenizer_file(path: str | Path):
    """A `tokenizers.Tokenizer` from tokenizer.json; a missing or unreadable file is named."""
    from tokenizers import Tokenizer
    path = Path(path)
    if not path.is_file():
        raise TunelabError("tokenizer.json missing", file=path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        raise TunelabError(f"cannot read the tokenizer ({str(e)[:160]})", file=path) from e


def is_corpus_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "meta.json").is_file()


# meta.json fields the readers rely on, and their types
_META_FIELDS = {"dtype": str, "block_size": int, "eot_id": int, "vocab_size": int}


def read_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a finished corpus directory; a missing, malformed or incomplete one names what is wrong."""
    d = Path(directory)
    if not d.is_dir():
        raise TunelabError("corpus directory not found", file=d)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise TunelabError("not a finished corpus directory (no meta.json: not prepared by `tunelab data "
                           "corpus`, or its preparation was interrupted)", file=d)
    _, meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise TunelabError(f"unknown corpus format {found!r} (expected {FORMAT})", file=meta_path)
    for key, kind in _META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TunelabError(f"expected {'an integer' if kind is int else 'a string'}, got "
                               f"{type(value).__name__ if key in meta else 'nothing'}", file=meta_path, field=key)
    if meta["dtype"] not in ("uint16", "uint32"):
        raise TunelabError(f"token dtype {meta['dtype']!r} is not uint16 or uint32", file=meta_path, field="dtype")
    return meta


def _read_index(path: Path):
    """A split's block index (offset, length, doc per block); a missing or unreadable one is named."""
    import numpy as np
    if not path.is_file():
        raise TunelabError("block index missing: the corpus is damaged; prepare it again", file=path)
    try:
        index = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise TunelabError(f"not a block index ({str(e).split('. ')[0][:120]}): the corpus is damaged; prepare "
                           "it again", file=path) from e
    if index.ndim != 1 or index.dtype.names is None or not {"offset", "length", "doc"} <= set(index.dtype.names):
        raise TunelabError(f"not a block index (dtype {index.dtype}, shape {index.shape}): the corpus is "
                           "damaged; prepare it again", file=path)
    return index


def read_docs(directory: str | Path) -> list[dict[str, Any]]:
    """docs.jsonl: one metadata record per kept document, in order (`doc` is the index)."""
    return [record for _, record in iter_doc_records(directory)]


def read_docs_of(directory: str | Path, wanted) -> dict[int, dict[str, Any]]:
    """The docs.jsonl records of the documents `wanted` (indices), {doc: record}: streamed, so evaluating a
    split never holds the metadata of every document of a large corpus."""
    wanted = set(wanted)
    return {doc: record for doc, record in iter_doc_records(directory, wanted)}


# what --show, --verify, synthesis and the evaluations read of a record, and its type
_DOC_FIELDS = {"doc": int, "split": str, "blocks": int}


def iter_doc_records(directory: str | Path, wanted: set[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) of docs.jsonl's documents, streamed (only `wanted` ones are parsed when given); a damaged
    line names its file, line and field."""
    path = Path(directory) / "docs.jsonl"
    if not path.is_file():
        raise TunelabError("docs.jsonl missing: the corpus is damaged; prepare it again", file=path)
    with path.open("rb") as f:
        doc = 0
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if wanted is None or doc in wanted:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise TunelabError("not UTF-8 text", file=path, line=lineno) from err
                record = parse_json(text, path, lineno)
                wrong = [k for k, kind in _DOC_FIELDS.items() if not isinstance(record, dict)
                         or not isinstance(record.get(k), kind) or isinstance(record.get(k), bool)]
                if wrong:
                    raise TunelabError("not a document record: the corpus is damaged", file=path, line=lineno,
                                       field=wrong[0])
                yield doc, record
            doc += 1
