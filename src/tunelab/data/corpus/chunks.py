"""The cleaned documents of a corpus's inputs, in input order and deduplicated (`iter_cleaned`).

Work is split into chunks of documents: the main process reads and deduplicates in input order, worker
processes clean, split sentences, tokenise and pack (order preserved, a bounded number of chunks in flight,
so memory does not grow with the corpus). Preparing a corpus, verifying one and training a tokenizer on
the cleaned text all read their inputs this way.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Iterator

from tunelab.data.corpus.clean import CleaningConfig, Deduplicator, clean_document, text_digest
from tunelab.data.corpus.kept import Kept
from tunelab.data.corpus.blocks import BlockPacker
from tunelab.data.corpus.read import BadLines, JsonlChunk, RawDoc, iter_work, parse_chunk, split_of

CHUNK_CHARS = 1 << 17      # characters of raw text per chunk handed to a worker (small: workers stay balanced)


@dataclass
class ReadSettings:
    """How documents are read, cleaned and split into train/val: recorded in meta.json, replayed by --verify."""
    text_field: str = "text"
    id_field: str | None = "id"
    title_field: str | None = "title"
    skip_bad: bool = False
    val_fraction: float = 0.01
    seed: int = 0
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)


class _ChunkWorker:
    """What one worker process holds: the settings and, when blocks are built, the tokenizer."""

    def __init__(self, settings: ReadSettings, tokenizer_file: str | None, block_size: int, eot_id: int):
        self.settings = settings
        self.packer = BlockPacker(tokenizer_file, block_size, eot_id) if tokenizer_file else None

    def run(self, work: JsonlChunk | list[RawDoc]) -> tuple[list[Kept], dict[str, int], BadLines | None]:
        """The chunk's kept documents (with blocks when a tokenizer is set), its counts (documents_read,
        raw_bytes, raw_chars and the cleaning counts) and, for JSONL lines parsed here, the bad lines skipped."""
        bad = None
        if isinstance(work, JsonlChunk):     # raw_bytes, for the progress bar: file bytes where they are known
            s = self.settings
            raws, bad = parse_chunk(work, s.text_field, s.id_field, s.title_field, s.skip_bad)
            raw_bytes = len(work.data)
        else:
            raws = work
            raw_bytes = sum(len(raw.text.encode("utf-8", "surrogatepass")) for raw in raws)
        kept: list[Kept] = []
        counts = {"documents_read": len(raws), "raw_bytes": raw_bytes, "raw_chars": 0}
        for raw in raws:
            counts["raw_chars"] += len(raw.text)
            doc, doc_counts = clean_document(raw, self.settings.cleaning)
            if doc is not None and not doc.text:      # min_chars 0: an empty document has no block to hold it
                doc, doc_counts = None, {**doc_counts, "too_short": 1}
            for key, n in doc_counts.items():
                counts[key] = counts.get(key, 0) + n
            if doc is not None:
                kept.append(Kept(doc, split_of(doc.text, self.settings.val_fraction, self.settings.seed),
                                 text_digest(doc.text), len(doc.text), doc.raw_chars))
        if self.packer is not None:
            self.packer.pack(kept)
            for k in kept:
                d = k.doc
                k.record = json.dumps({"id": d.id, "title": d.title, "file": d.file, "line": d.line,
                                       "split": k.split, "chars": len(d.text), "blocks": len(k.block_lengths)},
                                      ensure_ascii=False)[1:]
                k.doc = None
        return kept, counts, bad


_WORKER: _ChunkWorker | None = None


def _init_worker(settings: ReadSettings, tokenizer_file: str | None, block_size: int, eot_id: int) -> None:
    """A forked worker inherits the parent's `_WORKER` (tokenizer loaded, regexes compiled, encoder checked);
    a spawned one builds its own."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one thread per worker: the processes are the parallelism
    if _WORKER is None:
        _WORKER = _ChunkWorker(settings, tokenizer_file, block_size, eot_id)


def _run_chunk(work: JsonlChunk | list[RawDoc]):
    """The chunk's results from this process's worker, in the form `_unpack_chunk` takes."""
    assert _WORKER is not None
    return _pack_arrays(_WORKER.run(work), _WORKER.packer)


def _pack_arrays(results, packer: BlockPacker | None):
    """A chunk's results with the blocks of all its documents in two arrays, the tokens already in the dtype
    they are stored in: pickling thousands of small arrays to the main process cost more than building them
    (and the packer hands over plain lists)."""
    import numpy as np
    packed = [k for k in results[0] if k.tokens is not None]
    if packer is None or not packed:
        return results, None
    sizes = [(len(k.tokens), len(k.block_lengths)) for k in packed]
    arrays = (np.fromiter(chain.from_iterable(k.tokens for k in packed), packer.dtype, sum(t for t, _ in sizes)),
              np.fromiter(chain.from_iterable(k.block_lengths for k in packed), np.int32, sum(b for _, b in sizes)),
              sizes)
    for k in packed:
        k.tokens = k.block_lengths = None
    return results, arrays


def _unpack_chunk(results, arrays):
    """Inverse of `_pack_arrays`: each kept document's blocks become views of the chunk's arrays."""
    if arrays is None:
        return results
    tokens, lengths, sizes = arrays
    at_token = at_block = 0
    for k, (n_tokens, n_blocks) in zip(results[0], sizes):
        k.tokens = tokens[at_token: at_token + n_tokens]
        k.block_lengths = lengths[at_block: at_block + n_blocks]
        at_token += n_tokens
        at_block += n_blocks
    return results


def iter_cleaned(paths: list[Path], settings: ReadSettings, *, workers: int = 1, bad: BadLines | None = None,
                 tokenizer_file: str | None = None, block_size: int = 0, eot_id: int = 0,
                 counts: dict[str, int] | None = None, progress=None) -> Iterator[Kept]:
    """Kept documents of `paths` in input order, deduplicated; with a tokenizer file, packed into blocks.

    `counts` (if given) accumulates documents_read, the cleaning counts, duplicates and raw characters;
    `progress` (a tqdm bar) advances by raw UTF-8 bytes. Bounded memory: at most 2 chunks per worker in flight.
    """
    counts = counts if counts is not None else {}
    dedup = Deduplicator() if settings.cleaning.dedup else None
    work = iter_work(paths, CHUNK_CHARS, settings.text_field, settings.id_field, settings.title_field,
                     skip_bad=settings.skip_bad, bad=bad)
    for kept_docs, chunk_counts, chunk_bad in _map_chunks(work, settings, workers, tokenizer_file, block_size,
                                                          eot_id):
        for key, n in chunk_counts.items():
            counts[key] = counts.get(key, 0) + n
        if chunk_bad is not None and bad is not None:
            bad.merge(chunk_bad)
        if progress is not None:   # text bytes approximate file bytes (gzip, txt/json): never past 100%
            progress.update(min(chunk_counts["raw_bytes"], max(0, (progress.total or 0) - progress.n)))
        for kept in kept_docs:
            if dedup is not None and dedup.seen(kept.digest):
                counts["duplicates"] = counts.get("duplicates", 0) + 1
                continue
            counts["raw_chars_kept_docs"] = counts.get("raw_chars_kept_docs", 0) + kept.raw_chars
            yield kept


def _map_chunks(chunks: Iterator[JsonlChunk | list[RawDoc]], settings: ReadSettings, workers: int, tokenizer_file, block_size,
                eot_id):
    """Results of each chunk, in order: in this process (workers 1) or a pool with a bounded queue."""
    if workers <= 1:
        worker = _ChunkWorker(settings, tokenizer_file, block_size, eot_id)
        for chunk in chunks:
            yield _unpack_chunk(*_pack_arrays(worker.run(chunk), worker.packer))
        return
    import multiprocessing
    global _WORKER
    _WORKER = _ChunkWorker(settings, tokenizer_file, block_size, eot_id)   # built once, before the fork
    try:
        with multiprocessing.get_context().Pool(workers, _init_worker,
                                                (settings, tokenizer_file, block_size, eot_id)) as pool:
            _WORKER = None
            pending: deque = deque()
            for chunk in chunks:
                pending.append(pool.apply_async(_run_chunk, (chunk,)))
                if len(pending) >= 2 * workers:
                    yield _unpack_chunk(*pending.popleft().get())
            while pending:
                yield _unpack_chunk(*pending.popleft().get())
    finally:
        _WORKER = None
