"""Prepare a pretraining corpus: read → clean → deduplicate → sentence-aligned blocks → flat token files.

`tunelab data corpus INPUT… --tokenizer TOK --block-size N --out DIR` streams the inputs (`read`),
cleans each document (`clean`), and packs whole sentences (`sentences`) greedily into blocks of at most
`block_size` tokens, the final EOT included (`packing` says how blocks are cut). The inputs are read, cleaned
and packed chunk by chunk in worker processes (`chunks`); this module copies the tokenizer into the corpus,
writes the blocks, docs.jsonl and meta.json with its summary. Nothing is dropped: the blocks of a document,
decoded without their EOT and joined, give its cleaned text back — `--verify DIR` (`verify`) proves it by
re-reading and re-cleaning the inputs. The output is built in `DIR.tmp-<pid>` and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.data.corpus.chunks import ReadSettings, iter_cleaned
from tunelab.data.corpus.clean import COUNT_KEYS
from tunelab.data.corpus.kept import Kept
from tunelab.data.corpus.read import BadLines, HubInput, input_bytes, list_inputs
from tunelab.data.corpus.store import FORMAT, SPLITS, SplitWriter, read_tokenizer_file, token_dtype
from tunelab.errors import TunelabError
from tunelab.records import building_dir

MIN_BLOCK_SIZE = 8         # room for EOT and a 4-byte character split into single bytes


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
        raise TunelabError(f"cannot load tokenizer: {str(e).splitlines()[0]}", file=name_or_path) from e
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
