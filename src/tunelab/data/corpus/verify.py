"""Reading a prepared corpus back: `verify_corpus` re-reads and re-cleans the inputs and compares every
document with its decoded blocks; `show_blocks` decodes blocks as the model reads them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

from tunelab.data.corpus.chunks import ReadSettings, iter_cleaned
from tunelab.data.corpus.clean import CleaningConfig
from tunelab.data.corpus.kept import Kept
from tunelab.data.corpus.read import BadLines, HubInput, input_bytes, input_of_meta
from tunelab.data.corpus.store import SPLITS, CorpusBlocks, read_docs, read_meta, read_tokenizer_file
from tunelab.errors import TunelabError

MAX_DIFFERENCES = 20       # differences --verify prints (all are counted)


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
