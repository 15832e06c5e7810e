"""The articles QA pairs are asked about: from a prepared corpus directory or from raw JSONL/JSON/text files,
long ones cut at sentence boundaries into chunks of at most `chunk_chars` characters.

A prepared corpus keeps no raw text, only token blocks: a document's text is its blocks decoded with the
corpus's own tokenizer (exactly the cleaned text: `tunelab data corpus --verify` proves it), and its id,
title and split come from docs.jsonl, so `--split train` asks only about the articles the model trains on.

Every article gets a `key` unique in the corpus (its `source_id`, with `#k` for the k-th chunk of an article
cut in several), which the journal records, so a rerun knows what is finished. Order and keys are the same
on every run over the same inputs.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunelab.data.corpus.read import iter_documents, list_inputs
from tunelab.data.corpus.store import (SPLITS, CorpusBlocks, is_corpus_dir, iter_doc_records, read_meta,
                                       read_tokenizer_file)
from tunelab.data.corpus.sentences import soft_split_points, split_sentences
from tunelab.errors import TunelabError

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Article:
    key: str              # unique in the corpus: source_id, or source_id#k for chunk k of a cut article
    source_id: str
    chunk: int | None     # None when the article fits one chunk
    text: str             # what the model reads: the title line (when known) and the chunk


@dataclass
class ReadOptions:
    chunk_chars: int = 1500
    min_chars: int = 50          # shorter articles (non-space characters) are skipped and counted
    split: str = "all"           # train, val or all: which documents of a prepared corpus
    text_field: str = "text"
    id_field: str | None = "id"
    title_field: str | None = "title"

    def identity(self) -> dict:
        """What decides the articles' keys and texts: a resumed run must read its inputs the same way."""
        return {"chunk_chars": self.chunk_chars, "min_chars": self.min_chars, "split": self.split,
                "text_field": self.text_field, "id_field": self.id_field, "title_field": self.title_field}


def chunk_text(text: str, max_chars: int) -> list[str]:
    """`text` as whole sentences packed into chunks of at most `max_chars` characters, of similar lengths
    (a 1,600-character article at 1,500 gives two of ~800, not 1,500 + 100). A sentence longer than that
    length is cut at its last comma, colon or space that leaves at least half of it, else at the length.
    Chunks are stripped of surrounding white space; empty ones are dropped."""
    if len(text) <= max_chars:
        return [text.strip()] if text.strip() else []
    target = math.ceil(len(text) / math.ceil(len(text) / max_chars))
    chunks: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        for piece in _cut(sentence, target):
            if current and (len(current) + len(piece) > max_chars or len(current) >= target):
                chunks.append(current)
                current = ""
            current += piece
    chunks.append(current)
    return [c.strip() for c in chunks if c.strip()]


def _cut(sentence: str, max_chars: int) -> list[str]:
    """A sentence in pieces of at most `max_chars`; soft points found once, so a 5 MB line costs one pass."""
    if len(sentence) <= max_chars:
        return [sentence]
    points = sorted(soft_split_points(sentence))
    pieces, start = [], 0
    while len(sentence) - start > max_chars:
        limit = start + max_chars
        i = bisect.bisect_right(points, limit) - 1
        at = points[i] if i >= 0 and points[i] >= start + max_chars // 2 else limit
        pieces.append(sentence[start:at])
        start = at
    pieces.append(sentence[start:])
    return pieces


class ArticleSource:
    """The articles of `inputs` (corpus directories and raw files, in the order given), chunked.

    Iterating streams them (memory bounded by the largest document); `too_short` counts the articles
    skipped by `min_chars` during the last iteration.
    """

    def __init__(self, inputs: list[str], options: ReadOptions):
        if options.chunk_chars < 100:
            raise TunelabError("must be at least 100 characters", field="chunk_chars")
        if options.split not in ("all", *SPLITS):
            raise TunelabError(f"unknown split '{options.split}' (choose from all, {', '.join(SPLITS)})",
                               field="split")
        self.options = options
        self.corpus_dirs = [Path(i) for i in inputs if is_corpus_dir(i)]
        raw = [i for i in inputs if not is_corpus_dir(i)]
        for d in self.corpus_dirs:
            read_meta(d)
        self.files = list_inputs(raw) if raw else []
        if self.files and options.split != "all":
            raise TunelabError("applies to a prepared corpus directory; raw files have no split", field="split")
        self.too_short = 0

    def paths(self) -> list[Path]:
        """Every file the articles are read from (to make sure the output is not among them)."""
        return [f for f in self.files if isinstance(f, Path)] + [d / "docs.jsonl" for d in self.corpus_dirs]

    def __iter__(self) -> Iterator[Article]:
        self.too_short = 0
        seen: set[str] = set()
        for source_id, where, title, text in self._documents():
            if len(text) - sum(c.isspace() for c in text) < self.options.min_chars:
                self.too_short += 1
                continue
            if _SURROGATE.search(source_id):    # a lone "\\ud800" in an id: kept escaped, as JSON wrote it
                source_id = json.dumps(source_id)[1:-1]
            if title and _SURROGATE.search(title):
                title = None
            if source_id in seen:               # ids repeat in some dumps: the later one says where it is
                source_id = f"{source_id}@{where}"
            seen.add(source_id)
            chunks = chunk_text(text, self.options.chunk_chars)
            for k, chunk in enumerate(chunks):
                # the title as a header line, unless the text already starts with it (a raw wiki line does);
                # a body that merely begins with the title's words ("周国承（1940—2000）是…") still gets it
                shown = f"{title}\n\n{chunk}" if title and not chunk.startswith(title + "\n") else chunk
                if len(chunks) == 1:
                    yield Article(source_id, source_id, None, shown)
                else:
                    yield Article(f"{source_id}#{k}", source_id, k, shown)

    def _documents(self) -> Iterator[tuple[str, str, str | None, str]]:
        """(source_id, where, title, text) of every document."""
        for directory in self.corpus_dirs:
            yield from _corpus_documents(directory, self.options.split)
        o = self.options
        if self.files:
            for doc in iter_documents(self.files, o.text_field, o.id_field, o.title_field):
                where = f"{Path(doc.file).name}:{doc.line}"
                yield doc.id or where, where, doc.title, doc.text


def _corpus_documents(directory: Path, split: str) -> Iterator[tuple[str, str, str | None, str]]:
    """A prepared corpus's documents: ids and titles from docs.jsonl, text decoded from their blocks."""
    import numpy as np
    tok = read_tokenizer_file(directory / "tokenizer" / "tokenizer.json")
    wanted = SPLITS if split == "all" else (split,)
    blocks = {s: CorpusBlocks(directory, s) for s in wanted}
    doc_cols = {s: np.asarray(b.index["doc"]) for s, b in blocks.items()}
    for _, record in iter_doc_records(directory):
        doc, doc_split = record["doc"], record["split"]
        if doc_split not in blocks:
            continue
        b, col = blocks[doc_split], doc_cols[doc_split]
        lo, hi = int(np.searchsorted(col, doc, "left")), int(np.searchsorted(col, doc, "right"))
        ids = [t for i in range(lo, hi) for t in b.block(i)[:-1].tolist()]   # each block ends with EOT
        where = f"doc-{doc}"
        yield str(record.get("id") or where), where, record.get("title"), tok.decode(ids,
                                                                                    skip_special_tokens=False)
