"""Prepare a pretraining corpus: read → clean → deduplicate → sentence-aligned blocks → flat token files.

`tunelab data corpus INPUT… --tokenizer TOK --block-size N --out DIR` streams the inputs (corpus_read),
cleans each document (cleaning), and packs whole sentences (sentences) greedily into blocks of at most
`block_size` tokens, the final EOT included. No block spans two documents; a sentence longer than a block
is cut at its last comma/colon/space that fits, else at the last token boundary that is also a character
boundary, and counted. Nothing is dropped: the blocks of a document, decoded without their EOT and joined,
give its cleaned text back — `--verify DIR` proves it by re-reading and re-cleaning the inputs.

Each document is tokenised whole (so tokens across a sentence end are the ones the tokenizer would give the
running text) and the blocks are cut between its tokens, at the token boundary that ends a sentence or lies
in the whitespace after it. Decoding each block alone gives back its characters exactly for byte-level BPE
(GPT-2, Qwen, Llama-3 and `tunelab tokenizer train` tokenizers). A tokenizer that is not lossless — a
SentencePiece one that adds "▁" in front of every text, or one whose normalizer rewrites characters — still
prepares, and `--verify` reports each document whose decoded blocks differ from its text. Common byte-level
pipelines are encoded by `bpe_encode.fast_encoder` (the tokenizer's own ids, checked on a sample, faster).

Work is split into chunks of documents: the main process reads and deduplicates in input order, worker
processes clean, split sentences, tokenise and pack (order preserved, a bounded number of chunks in flight,
so memory does not grow with the corpus). The output is built in `DIR.tmp-<pid>` and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Iterator

from tunelab.data.corpus.encode import fast_encoder
from tunelab.data.corpus.clean import COUNT_KEYS, CleanDoc, CleaningConfig, Deduplicator, clean_document, text_digest
from tunelab.data.corpus.read import (BadLines, HubInput, JsonlChunk, RawDoc, input_bytes, input_of_meta, iter_work,
                                      list_inputs, parse_chunk, split_of)
from tunelab.data.corpus.store import (FORMAT, SPLITS, CorpusBlocks, SplitWriter, read_docs, read_meta,
                                       read_tokenizer_file, token_dtype)
from tunelab.data.corpus.sentences import count_sentences, soft_split_kinds, split_sentences
from tunelab.errors import TunelabError
from tunelab.records import building_dir

CHUNK_CHARS = 1 << 17      # characters of raw text per chunk handed to a worker (small: workers stay balanced)
MIN_BLOCK_SIZE = 8         # room for EOT and a 4-byte character split into single bytes
MAX_DIFFERENCES = 20       # differences --verify prints (all are counted)


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


@dataclass
class Kept:
    """A document that survived cleaning (the main process drops duplicates), its split and (when tokenised)
    its blocks. A worker that tokenised it sends back no text (`doc` None): the blocks hold it, and the
    digest, lengths and docs.jsonl record are all the main process needs."""
    doc: CleanDoc | None
    split: str
    digest: bytes = b""           # blake2b of the text, for exact-duplicate removal
    chars: int = 0                # characters of the cleaned text
    raw_chars: int = 0            # characters before cleaning
    sentences: int = 0
    # every block's ids, each block ending with EOT, and each block's length (EOT included): lists from the
    # packer, views of the chunk's arrays in the main process
    tokens: Any = None
    block_lengths: Any = None
    soft_cuts: int = 0            # long sentences cut at a comma/colon/space
    token_cuts: int = 0           # long sentences cut at a bare token boundary
    record: str = ""              # its docs.jsonl line after '{"doc": N, ' (built in the worker)


# --- cleaning in chunks, in worker processes --------------------------------------------------------------

class _ChunkWorker:
    """What one worker process holds: the settings and, when blocks are built, the tokenizer."""

    def __init__(self, settings: ReadSettings, tokenizer_file: str | None, block_size: int, eot_id: int):
        self.settings = settings
        self.packer = _Packer(tokenizer_file, block_size, eot_id) if tokenizer_file else None

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


def _pack_arrays(results, packer: _Packer | None):
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


# --- packing sentences into blocks ----------------------------------------------------------------------

class _Packer:
    """Tokenises documents whole and cuts their tokens into blocks at sentence ends (see the module doc)."""

    def __init__(self, tokenizer_file: str, block_size: int, eot_id: int):
        import numpy as np
        self.np = np
        self.tok = read_tokenizer_file(tokenizer_file)
        self.tok.encode_special_tokens = True     # "<|endoftext|>" typed in a document is text, not EOT
        self.cap = block_size - 1                 # tokens of text per block; EOT takes the last place
        self.dtype = np.dtype(token_dtype(self.tok.get_vocab_size(with_added_tokens=True)))
        self.eot_id = eot_id
        spec = json.loads(self.tok.to_str())      # read once: a large vocabulary's JSON takes a while
        self.token_bytes = _byte_level_token_bytes(self.tok, spec)
        self.fast = fast_encoder(self.tok, spec) if self.token_bytes is not None else None
        self.fast_checked = False

    def pack(self, docs: list[Kept]) -> None:
        if not docs:
            return
        texts = [k.doc.text for k in docs]
        if self.fast is not None and not self.fast_checked:   # rely on the fast encoder once it agrees
            self.fast_checked = True
            if not self.fast.agrees_with(self.tok, texts[:64]):
                self.fast = None
        if self.fast is not None:
            encoded = [(self.fast.encode(t), None) for t in texts]
        elif self.token_bytes is not None:
            encoded = [(e.ids, None) for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            encoded = [(e.ids, e) for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        for kept, (ids, enc) in zip(docs, encoded):
            self._pack_one(kept, ids, enc)

    def _boundaries(self, text: str, ids: list[int], enc):
        """(ids, character position and is-a-character-boundary of each token boundary 0..n)."""
        np = self.np
        ids = np.asarray(ids, dtype=np.int64)
        if enc is None:
            raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            ends = np.concatenate(([0], np.cumsum(self.token_bytes[ids])))
            if ends[-1] == raw.size:
                starts_char = np.append((raw & 0xC0) != 0x80, True)      # not a UTF-8 continuation byte
                char_at = np.concatenate(([0], np.cumsum(starts_char[:-1])))
                return ids, char_at[ends], starts_char[ends]
            enc = self.tok.encode(text, add_special_tokens=False)       # bytes differ: fall back to offsets
            ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        pos = np.append(offsets[:, 0], len(text))
        ok = np.ones(len(ids) + 1, dtype=bool)
        ok[1:-1] = offsets[:-1, 1] <= offsets[1:, 0]                     # no character shared by two tokens
        if len(ids):
            pos[0] = 0
        return ids, pos, ok

    def _pack_one(self, kept: Kept, ids: list[int], enc) -> None:
        np = self.np
        text = kept.doc.text
        if len(ids) <= self.cap:                  # the whole document is one block: nothing to cut
            kept.sentences = count_sentences(text)
            ids.append(self.eot_id)
            kept.tokens, kept.block_lengths = ids, [len(ids)]
            return
        sentences = split_sentences(text)
        kept.sentences = len(sentences)
        ids, pos, ok = self._boundaries(text, ids, enc)
        n = len(ids)
        cut_idx = np.flatnonzero(ok)              # token boundaries where a block may end
        cut_pos = pos[cut_idx]
        sent_ends = np.cumsum([len(s) for s in sentences])
        snap = _Snapper(text, cut_idx, cut_pos)
        cuts = sorted(set(k for k in snap.many(sent_ends) if k is not None) | {n})
        blocks: list[tuple[int, int]] = []
        cur = 0
        soft: dict[int, list[list[int]]] = {}
        while cur < n:
            limit = cur + self.cap
            j = bisect_right(cuts, limit) - 1
            if n <= limit:
                end = n
            elif j >= 0 and cuts[j] > cur:
                end = cuts[j]
            else:
                end = self._cut_long(snap, sentences, sent_ends, int(pos[cur]), cur, limit, kept, soft)
            blocks.append((cur, end))
            cur = end
        ids = ids.tolist()
        kept.tokens = [t for s, e in blocks for t in (*ids[s:e], self.eot_id)]
        kept.block_lengths = [e - s + 1 for s, e in blocks]

    def _cut_long(self, snap: _Snapper, sentences, sent_ends, char_pos: int, cur: int, limit: int,
                  kept: Kept, soft: dict[int, list[list[int]]]) -> int:
        """Where a block inside a too-long sentence ends: the last point after punctuation that fits, else the
        last after whitespace (`soft_split_points`' order), else a token boundary.

        A sentence's points are found and snapped to token boundaries once (`soft`, by sentence), not once a
        block: a 200,000-character sentence took 84 s at block size 32. Snapping keeps their order, so the
        last that fits is found by bisection."""
        s = min(int(self.np.searchsorted(sent_ends, char_pos, side="right")), len(sentences) - 1)
        if s not in soft:
            start = int(sent_ends[s - 1]) if s else 0
            soft[s] = [[k for k in snap.many(self.np.asarray(points, dtype=self.np.int64) + start) if k is not None]
                       for points in soft_split_kinds(sentences[s])]
        for snapped in soft[s]:
            i = bisect_right(snapped, limit) - 1
            if i >= 0 and snapped[i] > cur:
                kept.soft_cuts += 1
                return snapped[i]
        i = int(self.np.searchsorted(snap.cut_idx, limit, side="right")) - 1
        k = int(snap.cut_idx[i])
        if k <= cur:
            raise TunelabError(f"block size {self.cap + 1} is too small: one character of document "
                               f"{kept.doc.id or ''} needs more tokens", file=kept.doc.file, line=kept.doc.line)
        kept.token_cuts += 1
        return k


class _Snapper:
    """Maps a character position to the token boundary that ends there, or that starts the whitespace before it.

    Byte-level BPE glues a space to the next word (" The"), so "Hello. " | "The" is cut as "Hello." | " The".
    """

    def __init__(self, text: str, cut_idx, cut_pos):
        self.text, self.cut_idx, self.cut_pos = text, cut_idx, cut_pos

    def many(self, positions) -> list[int | None]:
        import numpy as np
        i = np.searchsorted(self.cut_pos, positions, side="right") - 1
        out: list[int | None] = []
        for c, j in zip(positions.tolist(), i.tolist()):
            out.append(self._at(c, j))
        return out

    def one(self, position: int) -> int | None:
        import numpy as np
        return self._at(position, int(np.searchsorted(self.cut_pos, position, side="right")) - 1)

    def _at(self, c: int, j: int) -> int | None:
        if j < 0:
            return None
        p = int(self.cut_pos[j])
        if p == c or self.text[p:c].isspace():
            return int(self.cut_idx[j])
        return None


def _byte_level_token_bytes(tok, spec: dict):
    """UTF-8 length of every token id for a byte-level BPE without a normalizer (else None: use offsets);
    `spec` is the tokenizer's JSON, parsed."""
    import numpy as np
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or spec.get("normalizer") is not None:
        return None
    size = tok.get_vocab_size(with_added_tokens=True)
    lengths = np.zeros(size, dtype=np.int64)
    for token, i in tok.get_vocab(with_added_tokens=False).items():
        lengths[i] = len(token)          # one byte-level character per byte
    for i, added in tok.get_added_tokens_decoder().items():
        lengths[i] = len(added.content.encode("utf-8"))   # added tokens are kept as plain text
    return lengths


# --- preparing a corpus directory -------------------------------------------------------------------------

def prepare_corpus(inputs: list[str | Path], tokenizer: str, block_size: int, out: str | Path,
                   settings: ReadSettings | None = None, workers: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Build corpus directory `out` from `inputs`; returns its meta.json (summary included)."""
    from tqdm.auto import tqdm
    settings = settings or ReadSettings()
    out = Path(out)
    if block_size < MIN_BLOCK_SIZE:
        raise TunelabError(f"block_size must be at least {MIN_BLOCK_SIZE}, got {block_size}")
    if not 0 <= settings.val_fraction < 1:
        raise TunelabError(f"val_fraction must be in [0, 1), got {settings.val_fraction}")
    if out.exists():
        raise TunelabError("output directory exists; choose a new one (a corpus is never overwritten)",
                           file=out)
    paths = list_inputs(inputs)
    workers = workers or os.cpu_count() or 1
    with building_dir(out) as tmp:
        started = time.perf_counter()
        tok_meta, tokenizer_file, eot_id, vocab_size = _copy_tokenizer(tokenizer, tmp / "tokenizer")
        dtype = token_dtype(vocab_size)
        writers = {split: SplitWriter(tmp, split, dtype) for split in SPLITS}
        bad = BadLines()
        counts: dict[str, int] = {}
        total = {"documents": 0, "sentences": 0, "chars": 0, "soft": 0, "token": 0}
        total_bytes = sum(input_bytes(p) for p in paths)
        with open(tmp / "docs.jsonl", "w", encoding="utf-8") as docs_file, \
                tqdm(total=total_bytes, unit="B", unit_scale=True, desc="corpus", disable=not progress,
                     file=sys.stderr) as bar:
            for kept in iter_cleaned(paths, settings, workers=workers, bad=bad, tokenizer_file=tokenizer_file,
                                     block_size=block_size, eot_id=eot_id, counts=counts, progress=bar):
                _write_doc(kept, total["documents"], writers[kept.split], docs_file)
                total["documents"] += 1
                total["sentences"] += kept.sentences
                total["chars"] += kept.chars
                total["soft"] += kept.soft_cuts
                total["token"] += kept.token_cuts
            bar.update(max(0, total_bytes - bar.n))
        splits = {split: w.close() for split, w in writers.items()}
        seconds = time.perf_counter() - started
        if total["documents"] == 0:
            raise TunelabError("no document left after cleaning (all too short, duplicates or bad lines)",
                               file=paths[0] if len(paths) == 1 else None)
        summary = _summary(counts, bad, total, splits, block_size, total_bytes, seconds)
        meta = {
            "format": FORMAT, "dtype": dtype, "block_size": block_size, "eot_id": eot_id,
            "eot_token": tok_meta.pop("eot_token"), "vocab_size": vocab_size, "tokenizer": tok_meta,
            "text_field": settings.text_field, "id_field": settings.id_field, "title_field": settings.title_field,
            "skip_bad": settings.skip_bad, "cleaning": settings.cleaning.as_meta(),
            "val_fraction": settings.val_fraction, "seed": settings.seed,
            "inputs": [p.as_meta() if isinstance(p, HubInput) else {"path": str(p.resolve()), "bytes": input_bytes(p)}
                       for p in paths],
            "splits": splits, "summary": summary,
            "rows": {"max_len": block_size,
                     "padding_pct_if_one_block_per_row": summary["padding_pct_if_one_block_per_row"]},
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:   # last: a directory with meta.json is whole
            json.dump(meta, f, ensure_ascii=False, indent=2)
            f.write("\n")
    return meta


def _write_doc(kept: Kept, index: int, writer: SplitWriter, docs_file) -> None:
    writer.add_blocks(kept.tokens, kept.block_lengths, index)
    docs_file.write(f'{{"doc": {index}, {kept.record}\n')


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


def _copy_tokenizer(name_or_path: str, dest: Path) -> tuple[dict[str, Any], str, int, int]:
    """Copy the tokenizer into the corpus; (identity for meta.json, tokenizer.json path, EOT id, vocab size).

    A local directory with tokenizer.json is copied file by file (no transformers import: seconds saved);
    anything else (a hub id, a slow-only directory) goes through AutoTokenizer and save_pretrained.
    """
    import hashlib
    src = Path(name_or_path)
    if src.exists() and not src.is_dir():
        raise TunelabError("tokenizer must be a tokenizer directory (or a Hugging Face hub id)", file=src)
    eos = _configured_eos(src) if (src / "tokenizer.json").is_file() else None
    if eos is not None:
        tok = read_tokenizer_file(src / "tokenizer.json")  # a broken one is named where the user keeps it
        dest.mkdir()
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
    else:
        eos = _save_with_transformers(name_or_path, dest)
        if not (dest / "tokenizer.json").is_file():
            raise TunelabError("a fast tokenizer (tokenizer.json) is needed", file=name_or_path)
        tok = read_tokenizer_file(dest / "tokenizer.json")
    tokenizer_file = dest / "tokenizer.json"
    eot_id = tok.token_to_id(eos)
    if eot_id is None:
        raise TunelabError(f"the EOS token {eos!r} is not in the tokenizer's vocabulary", file=name_or_path)
    meta = {"source": "local" if src.is_dir() else "hub",
            "name_or_path": str(src.resolve()) if src.is_dir() else name_or_path,
            "sha256": hashlib.sha256(tokenizer_file.read_bytes()).hexdigest(), "eot_token": eos}
    return meta, str(tokenizer_file), int(eot_id), tok.get_vocab_size(with_added_tokens=True)


def _configured_eos(src: Path) -> str | None:
    """The eos_token named in tokenizer_config.json or special_tokens_map.json (a string or {"content": …})."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = src / name
        if path.is_file():
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and eos:
                return eos
    return None


def _save_with_transformers(name_or_path: str, dest: Path) -> str:
    from transformers import AutoTokenizer
    try:
        hf = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise TunelabError(f"cannot load tokenizer: {str(e).splitlines()[0]}", file=name_or_path) from None
    if hf.eos_token is None:
        raise TunelabError("the tokenizer has no EOS token to end blocks with", file=name_or_path)
    hf.save_pretrained(dest)
    return hf.eos_token


def _summary(counts, bad: BadLines, total, splits, block_size, input_bytes, seconds) -> dict[str, Any]:
    blocks = sum(s["blocks"] for s in splits.values())
    tokens = sum(s["tokens"] for s in splits.values())
    raw_kept = counts.get("raw_chars_kept_docs", 0)
    raw_chars = counts.get("raw_chars", 0)
    return {
        "documents_read": counts.get("documents_read", 0),
        "documents_kept": total["documents"],
        "duplicates_removed": counts.get("duplicates", 0),
        "too_short": counts.get("too_short", 0),
        "bad_lines": bad.count, "bad_line_examples": bad.examples,
        "sentences": total["sentences"], "blocks": blocks, "tokens": tokens,
        "chars_kept": total["chars"],
        "raw_chars": raw_chars,
        "chars_kept_pct": round(100 * total["chars"] / raw_chars, 2) if raw_chars else 0.0,
        "chars_kept_pct_of_kept_documents": round(100 * total["chars"] / raw_kept, 2) if raw_kept else 0.0,
        "cleaning": {key: counts.get(key, 0) for key in COUNT_KEYS},
        "long_sentence_splits": {"at_soft_point": total["soft"], "at_token_boundary": total["token"]},
        "padding_pct_if_one_block_per_row": round(100 * (1 - tokens / (blocks * block_size)), 2) if blocks else 0.0,
        "input_mb": round(input_bytes / 1e6, 3), "seconds": round(seconds, 2),
        "mb_per_s": round(input_bytes / 1e6 / seconds, 2) if seconds else None,
    }


def format_summary(meta: dict[str, Any]) -> str:
    s = meta["summary"]
    c = s["cleaning"]
    lines = [
        f"documents: {s['documents_read']} read, {s['documents_kept']} kept "
        f"({s['duplicates_removed']} duplicates, {s['too_short']} too short, {s['bad_lines']} bad lines)",
        f"train: {meta['splits']['train']['documents']} documents, {meta['splits']['train']['blocks']} blocks, "
        f"{meta['splits']['train']['tokens']} tokens; val: {meta['splits']['val']['documents']} documents, "
        f"{meta['splits']['val']['blocks']} blocks, {meta['splits']['val']['tokens']} tokens",
        f"sentences: {s['sentences']}; long sentences cut: {s['long_sentence_splits']['at_soft_point']} at "
        f"a comma/space, {s['long_sentence_splits']['at_token_boundary']} at a token boundary",
        f"characters kept after cleaning: {s['chars_kept_pct']}% of all read "
        f"({s['chars_kept_pct_of_kept_documents']}% within the documents kept)",
        "cleaning: " + ", ".join(f"{k} {v}" for k, v in c.items()),
        f"dtype {meta['dtype']} (vocabulary {meta['vocab_size']}); padding if one block per row of "
        f"{meta['block_size']}: {s['padding_pct_if_one_block_per_row']}%",
        f"{s['input_mb']} MB in {s['seconds']} s ({s['mb_per_s']} MB/s)",
    ]
    lines += [f"bad line: {e}" for e in s["bad_line_examples"]]
    return "\n".join(lines)


# --- verify and show --------------------------------------------------------------------------------------

def settings_from_meta(meta: dict[str, Any]) -> ReadSettings:
    return ReadSettings(text_field=meta["text_field"], id_field=meta["id_field"], title_field=meta["title_field"],
                        skip_bad=meta.get("skip_bad", False), val_fraction=meta["val_fraction"], seed=meta["seed"],
                        cleaning=CleaningConfig(**meta["cleaning"]))


def verify_corpus(directory: str | Path, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Re-read and re-clean the inputs of a corpus and compare every document with its decoded blocks.

    Returns {"documents": checked, "differences": count, "examples": [first MAX_DIFFERENCES differences]}.
    A difference names the document (doc index, id, file, line) and the first character that differs.
    """
    from tqdm.auto import tqdm
    directory = Path(directory)
    meta = read_meta(directory)
    docs = read_docs(directory)
    paths = [input_of_meta(i) for i in meta["inputs"]]
    for item, p in zip(meta["inputs"], paths):
        if isinstance(p, HubInput):     # re-read from the hub (offline: the local cache)
            continue
        if not p.exists():
            raise TunelabError("input of this corpus not found (verifying re-reads the inputs)", file=p)
        if input_bytes(p) != item["bytes"]:
            raise TunelabError(f"input changed since the corpus was prepared ({item['bytes']} bytes then, "
                               f"{input_bytes(p)} now)", file=p)
    tok = read_tokenizer_file(directory / "tokenizer" / "tokenizer.json")
    blocks = {split: CorpusBlocks(directory, split) for split in SPLITS}
    import numpy as np
    doc_col = {split: np.asarray(b.index["doc"]) for split, b in blocks.items()}
    problems: list[dict[str, Any]] = []
    count = 0
    checked = 0
    structure, decodable = _check_structure(blocks)
    if not decodable:  # nothing to compare the documents with
        return {"documents": 0, "differences": len(structure), "examples": structure[:MAX_DIFFERENCES]}
    bar = tqdm(total=sum(i["bytes"] for i in meta["inputs"]), unit="B", unit_scale=True, desc="verify",
               disable=not progress, file=sys.stderr)
    with bar:
        for index, kept in enumerate(iter_cleaned(paths, settings_from_meta(meta), workers=workers or
                                                   os.cpu_count() or 1, bad=BadLines(), progress=bar)):
            checked += 1
            record = docs[index] if index < len(docs) else None
            problem = _compare(index, kept, record, blocks, doc_col, tok)
            if problem:
                count += 1
                if len(problems) < MAX_DIFFERENCES:
                    problems.append(problem)
    if checked != len(docs):
        count += 1
        problems.append({"problem": f"{checked} documents after cleaning the inputs, the corpus holds {len(docs)}"})
    count += len(structure)
    problems = structure + problems
    return {"documents": checked, "differences": count, "examples": problems[:MAX_DIFFERENCES]}


def _check_structure(blocks: dict[str, CorpusBlocks]) -> tuple[list[dict[str, Any]], bool]:
    """Every block ends with EOT, holds no other EOT, fits the block size and holds only ids of the vocabulary:
    (the problems, whether every id can be decoded)."""
    import numpy as np
    problems = []
    decodable = True
    for split, b in blocks.items():
        if not len(b):
            continue
        ends = b.index["offset"] + b.index["length"] - 1
        not_eot = np.flatnonzero(np.asarray(b.tokens)[ends] != b.eot_id)
        too_long = np.flatnonzero(b.lengths > b.block_size)
        inner_eot = int((np.asarray(b.tokens) == b.eot_id).sum()) - (len(b) - len(not_eot))
        if len(not_eot):
            problems.append({"split": split, "problem": f"{len(not_eot)} blocks do not end with EOT",
                             "first_block": int(not_eot[0])})
        if len(too_long):
            problems.append({"split": split, "problem": f"{len(too_long)} blocks longer than the block size",
                             "first_block": int(too_long[0])})
        if inner_eot:
            problems.append({"split": split, "problem": f"{inner_eot} EOT tokens inside blocks"})
        outside = np.flatnonzero(np.asarray(b.tokens) >= b.vocab_size)
        if len(outside):
            decodable = False
            problems.append({"split": split, "problem": f"{len(outside)} token ids outside the vocabulary of "
                                                        f"{b.vocab_size}", "first_token": int(outside[0])})
    return problems, decodable


def _compare(index: int, kept: Kept, record, blocks, doc_col, tok) -> dict[str, Any] | None:
    import numpy as np
    where = {"doc": index, "id": kept.doc.id, "file": kept.doc.file, "line": kept.doc.line}
    if record is None:
        return {**where, "problem": "document missing from the corpus"}
    b = blocks[kept.split]
    col = doc_col[kept.split]
    lo, hi = int(np.searchsorted(col, index, "left")), int(np.searchsorted(col, index, "right"))
    if record["split"] != kept.split or hi - lo != record["blocks"]:
        return {**where, "problem": f"split/blocks differ: corpus has {record['split']}/{record['blocks']}, "
                                    f"inputs give {kept.split}/{hi - lo}"}
    decoded = "".join(tok.decode_batch([b.block(i)[:-1].tolist() for i in range(lo, hi)],
                                       skip_special_tokens=False))
    text = kept.doc.text
    if decoded == text:
        return None
    at = next((i for i, (x, y) in enumerate(zip(decoded, text)) if x != y), min(len(decoded), len(text)))
    return {**where, "problem": "decoded blocks differ from the cleaned text", "position": at,
            "expected": text[max(0, at - 20): at + 40], "decoded": decoded[max(0, at - 20): at + 40]}


def show_blocks(directory: str | Path, doc: str | None = None, split: str | None = None,
                limit: int = 20) -> Iterator[dict[str, Any]]:
    """Blocks as the model reads them: {doc, id, split, block, tokens, text} (decoded, EOT shown)."""
    import numpy as np
    directory = Path(directory)
    read_meta(directory)
    docs = read_docs(directory)
    if doc is not None:
        chosen = [d for d in docs if d["id"] == doc] or [d for d in docs if str(d["doc"]) == doc]
        if not chosen:
            raise TunelabError(f"no document with id or index {doc!r}", file=directory / "docs.jsonl")
    else:
        chosen = docs
    if split is not None:
        chosen = [d for d in chosen if d["split"] == split]
    tok = read_tokenizer_file(directory / "tokenizer" / "tokenizer.json")
    blocks = {s: CorpusBlocks(directory, s) for s in SPLITS}
    cols = {s: np.asarray(b.index["doc"]) for s, b in blocks.items()}
    shown = 0
    for d in chosen:
        b = blocks[d["split"]]
        lo, hi = int(np.searchsorted(cols[d["split"]], d["doc"], "left")), \
            int(np.searchsorted(cols[d["split"]], d["doc"], "right"))
        for i in range(lo, hi):
            if shown >= limit:
                return
            ids = b.block(i).tolist()
            yield {"doc": d["doc"], "id": d["id"], "split": d["split"], "block": i, "tokens": len(ids),
                   "text": tok.decode(ids, skip_special_tokens=False)}
            shown += 1
