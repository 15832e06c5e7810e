"""The `continuation` task: does a pretrained model continue a held-out article the way the article goes on?

Each document gives one example: the prompt is its first sentence (`tunelab.data.corpus.sentences.split_sentences`),
plus the sentence after it when the first is a title line (the document's title on a line of its own, or a
first line with no sentence-ending punctuation); the reference is the rest of the document, its first
`reference_chars` characters (default 200). The prompt goes to the batched greedy engine as raw text — no
template, as a continuation model was trained — for `max_new_tokens` tokens (default: the evaluation's) or
until EOT.

Data: a prepared corpus directory (`tunelab data corpus`; the documents of split `split`, default `val`,
rebuilt exactly by decoding their blocks), or a JSONL/JSON file of {text[, id]} records. A document with a
single sentence has nothing to continue: it is skipped and counted (`skipped`).

Metrics:

* `rougeL_f` (primary), `rougeL_p`, `rougeL_r` (×100): Rouge-L of the continuation against the reference
  (`tunelab.metrics.rouge`; setting `segmentation`, default auto = one token per CJK character for Chinese);
  `rougeL_f_chance`: each continuation against the next document's reference instead — the overlap that
  fluent text in the corpus's style gets anyway (common characters, stock phrases);
* with a `facts` file (qa.jsonl records {question, answer, source_id}, as `tunelab data encyclopedia` writes
  them; `source_id` is a document's id): `fact_recall` = per article, the share of its answers found in the
  continuation (NFKC, case and white space ignored), averaged over the articles that have any; answers
  already in the prompt are left out (repeating the prompt proves nothing). Also `facts`, `facts_recalled`,
  `articles_with_facts`, and `fact_recall_chance`: the same measure against the next article's facts, i.e.
  what string matching finds by chance (a common year or place name) — fact recall means something only
  well above it.

`samples` (default 5) continuations are kept in the metrics ({id, prompt, continuation, reference}) for the
run report; every row of the predictions file keeps prompt / continuation / reference as well.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.rouge import resolve_segmentation, rouge_l, summarize_rouge
from tunelab.tasks.registry import Task, register_task

_END = "。！？!?；;….」”’）)\"'"


def _is_title_line(sentence: str) -> bool:
    """A first line with no sentence-ending punctuation (a heading such as '北京南站\\n')."""
    line = sentence.rstrip()
    return sentence.endswith("\n") and bool(line) and line[-1] not in _END and "\n" not in line


def split_prompt(text: str, title: str | None = None) -> tuple[str, str]:
    """(prompt, rest): the first sentence (with the title line in front when the text starts with one)."""
    from tunelab.data.corpus.sentences import split_sentences
    sentences = split_sentences(text)
    n = 1
    if len(sentences) > 1 and ((title and sentences[0].strip() == title.strip()) or _is_title_line(sentences[0])):
        n = 2
    prompt = "".join(sentences[:n])
    return prompt, text[len(prompt):]


def normalize_fact(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def corpus_documents(directory: str | Path, split: str) -> list[tuple[str, str, str | None]]:
    """(id, text, title) of every document of one split of a prepared corpus, text decoded from its blocks."""
    from tunelab.data.corpus.store import CorpusBlocks, read_docs_of
    from tunelab.model.loading import load_tokenizer
    blocks = CorpusBlocks(directory, split)
    docs = read_docs_of(directory, blocks.index["doc"].tolist())
    tokenizer = load_tokenizer(str(blocks.tokenizer_dir()))
    ids_of: dict[int, list[int]] = {}   # a document's blocks, EOTs dropped, decoded at once
    for i, doc in enumerate(blocks.index["doc"].tolist()):
        ids = blocks.block(i).tolist()
        ids_of.setdefault(doc, []).extend(ids[:-1] if ids and ids[-1] == blocks.eot_id else ids)
    out = []
    for doc, ids in ids_of.items():
        meta = docs.get(doc, {})
        ident = meta.get("id")
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append((str(ident) if ident is not None else f"doc-{doc}", text, meta.get("title")))
    return out


def file_documents(path: str | Path) -> list[tuple[str, str, str | None]]:
    from tunelab.records import iter_records, require_str
    path = Path(path)
    out = []
    for index, (line, rec) in enumerate(iter_records(path)):
        text = require_str(rec, "text", path, line)
        ident = require_str(rec, "id", path, line) if rec.get("id") is not None else f"{path.stem}-{index}"
        title = rec.get("title") if isinstance(rec.get("title"), str) else None
        out.append((ident, text, title))
    return out


def read_facts(path: str | Path) -> dict[str, list[str]]:
    """{source_id: [answer, …]} from a qa.jsonl file."""
    from tunelab.records import iter_records, require_str
    path = Path(path)
    facts: dict[str, list[str]] = {}
    for line, rec in iter_records(path):
        answer = require_str(rec, "answer", path, line)
        source = require_str(rec, "source_id", path, line)
        facts.setdefault(source, []).append(answer)
    return facts


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _chance(with_facts: list[dict[str, Any]]) -> float | None:
    """Fact recall against the NEXT article's facts (those not in this prompt): what matching finds by chance
    (common years, place names); None with fewer than two articles."""
    if len(with_facts) < 2:
        return None
    shares = []
    for i, g in enumerate(with_facts):
        said, wrote = normalize_fact(g["prompt"]), normalize_fact(g["continuation"])
        other = [a for a in with_facts[(i + 1) % len(with_facts)]["facts"] if normalize_fact(a) not in said]
        if other:
            shares.append(sum(normalize_fact(a) in wrote for a in other) / len(other))
    return _mean(shares)


@register_task
class ContinuationTask(Task):
    name = "continuation"
    primary_metric = "rougeL_f"
    settings = ("split", "reference_chars", "facts", "segmentation", "max_new_tokens", "samples")
    reads_corpus = True
    split = "val"
    reference_chars = 200
    facts: str | None = None
    segmentation = "auto"
    max_new_tokens: int | None = None
    samples = 5
    skipped = 0

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        resolve_segmentation(self.segmentation)
        from tunelab.data.corpus.store import SPLITS
        if self.split not in SPLITS:
            raise TunelabError(f"unknown split '{self.split}' (choose from {', '.join(SPLITS)})", field="split")
        for key in ("reference_chars", "samples"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < (1 if key != "samples" else 0):
                raise TunelabError(f"{key} must be a positive whole number, got {getattr(self, key)!r}", field=key)
        if self.facts is not None and not Path(self.facts).is_file():
            raise TunelabError("facts file not found", file=self.facts, field="facts")
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        from tunelab.data.corpus.store import is_corpus_dir, read_meta
        if Path(path).is_dir():
            if not is_corpus_dir(path):
                read_meta(path)  # says why the folder is not a finished corpus
            documents = corpus_documents(path, self.split)
        else:
            documents = file_documents(path)
        facts = read_facts(self.facts) if self.facts else {}
        examples, self.skipped = [], 0
        for ident, text, title in documents:
            prompt, rest = split_prompt(text, title)
            if not prompt.strip() or not rest.strip():
                self.skipped += 1
                continue
            examples.append(Example(id=ident, instruction=prompt, output=rest[: self.reference_chars],
                                    kind=title or "", answers=list(facts.get(ident, []))))
        if not examples:
            raise TunelabError(f"no document with more than one sentence to continue ({self.skipped} skipped)",
                               file=path)
        if facts and not any(ex.answers for ex in examples):
            raise TunelabError("no document's id is a source_id of the facts file (its source_id must name "
                               "the documents' id field)", file=self.facts, field="source_id")
        return examples

    def prompt(self, example: Example, template, shots=()) -> str:
        return example.instruction  # raw text: a continuation model has no template

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        s = rouge_l(prediction, example.output, self.segmentation)
        said = normalize_fact(example.instruction)
        wrote = normalize_fact(prediction)
        facts = [a for a in example.answers if normalize_fact(a) and normalize_fact(a) not in said]
        recalled = [a for a in facts if normalize_fact(a) in wrote]
        return {"id": example.id, "correct": bool(facts) and len(recalled) == len(facts), "rougeL_f": s["fmeasure"],
                "rougeL_p": s["precision"], "rougeL_r": s["recall"], "segmentation": s["segmentation"],
                "prompt": example.instruction, "continuation": prediction, "reference": example.output,
                "facts": facts, "facts_recalled": recalled}

    def _rouge_chance(self, graded: list[dict[str, Any]]) -> float | None:
        """Mean Rouge-L F (×100) of each continuation against the NEXT document's reference: the overlap any
        fluent text in the corpus's style gets; None with a single document."""
        if len(graded) < 2:
            return None
        pairs = zip(graded, graded[1:] + graded[:1])
        return 100 * _mean([rouge_l(g["continuation"], h["reference"], self.segmentation)["fmeasure"]
                            for g, h in pairs])

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        scores = [{"fmeasure": g["rougeL_f"], "precision": g["rougeL_p"], "recall": g["rougeL_r"],
                   "segmentation": g["segmentation"]} for g in graded]
        out = {**summarize_rouge(scores, self.segmentation), "rougeL_f_chance": self._rouge_chance(graded),
               "skipped": self.skipped,
               "reference_chars": self.reference_chars, "max_new_tokens": self.max_new_tokens}
        if self.facts:
            with_facts = [g for g in graded if g["facts"]]
            out.update({
                "fact_recall": _mean([len(g["facts_recalled"]) / len(g["facts"]) for g in with_facts]),
                "fact_recall_chance": _chance(with_facts),
                "facts": sum(len(g["facts"]) for g in with_facts),
                "facts_recalled": sum(len(g["facts_recalled"]) for g in with_facts),
                "articles_with_facts": len(with_facts)})
        out["samples"] = [{"id": g["id"], "prompt": g["prompt"], "continuation": g["continuation"],
                           "reference": g["reference"]} for g in graded[: self.samples]]
        return out
