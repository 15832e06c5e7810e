"""Question–answer pairs split for supervised fine-tuning as a pretraining corpus split their articles.

A course run pretrains on articles and then fine-tunes on questions about them; its held-out questions must
be about articles the pretrained model never read, so the corpus's document split decides, not a split of
the pairs. The pairs may come from the encyclopedia generator's qa.jsonl or be synthesised from the articles:
anything `{question, answer, source_id}` whose source_id is a document id of the corpus.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from tunelab.data.corpus.store import read_docs, read_meta
from tunelab.errors import TunelabError
from tunelab.records import building_dir, iter_records, require_str, write_json, write_jsonl


def _question_key(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def split_qa_by_corpus(qa_files: list[str | Path], corpus: str | Path, out: str | Path) -> dict:
    """Write OUT/train.jsonl and OUT/val.jsonl: the QA pairs ({question, answer, source_id}: this generator's
    qa.jsonl, or pairs synthesised from the articles) of the corpus's val-split articles, held out, and those of
    its train-split articles for fine-tuning. Returns the counts (also in OUT/summary.json).

    The corpus's document split decides, so the held-out articles are ones the pretrained model never read.
    Their facts recur in other articles, asked in the same words (one question per fact), so a training pair
    that asks a held-out question is dropped too: no held-out question is ever trained on. Exact repeats of a
    pair within a split are kept once; pairs of articles the corpus does not hold (dropped as duplicates or too
    short) are counted, not used. Records are alpaca ({id, instruction: question, output: answer, source_id}), which
    training and the `rougel` task read. Built in a temporary sibling and renamed: an existing OUT is refused."""
    out = Path(out)
    if out.exists():
        raise TunelabError("output already exists; choose a new directory", file=out)
    read_meta(corpus)  # says why a folder is not a finished corpus
    split_of = {str(d["id"]): d["split"] for d in read_docs(corpus) if d.get("id") is not None}
    pairs: dict[str, list[dict]] = {"train": [], "val": []}
    seen: dict[str, set[tuple[str, str]]] = {"train": set(), "val": set()}
    counts = Counter()
    unknown = ""  # the first source_id that names no corpus document, for the error below
    for qa_file in qa_files:
        qa_file = Path(qa_file)
        for line, rec in iter_records(qa_file):
            question, answer = require_str(rec, "question", qa_file, line), require_str(rec, "answer", qa_file, line)
            source = require_str(rec, "source_id", qa_file, line)
            split = split_of.get(source)
            if split is None:
                counts["not_in_corpus"] += 1
                unknown = unknown or source
                continue
            key = (_question_key(question), _question_key(answer))
            if key in seen[split]:
                counts["repeated"] += 1
                continue
            seen[split].add(key)
            pairs[split].append({"id": f"{source}-{len(pairs[split])}", "instruction": question, "output": answer,
                                 "source_id": source})
    held_out = {_question_key(p["instruction"]) for p in pairs["val"]}
    train = [p for p in pairs["train"] if _question_key(p["instruction"]) not in held_out]
    summary = {"corpus": str(corpus), "qa_files": [str(f) for f in qa_files], "train": len(train),
               "val": len(pairs["val"]), "train_asking_held_out": len(pairs["train"]) - len(train),
               "train_articles": len({p["source_id"] for p in train}),
               "val_articles": len({p["source_id"] for p in pairs["val"]}),
               "repeated": counts["repeated"], "not_in_corpus": counts["not_in_corpus"]}
    if not train or not pairs["val"]:
        read = len(train) + summary["train_asking_held_out"] + len(pairs["val"]) + sum(counts.values())
        why = (f"; {counts['not_in_corpus']} of the {read} pairs name no document of the corpus (source_id "
               f"{unknown!r}: it must be a document id in {Path(corpus) / 'docs.jsonl'})" if unknown else "")
        raise TunelabError(f"no QA pair of the corpus's {'val' if not pairs['val'] else 'train'} split to use"
                           + why, file=qa_files[0])
    with building_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", pairs["val"])
        write_json(tmp / "summary.json", summary)
    return summary
