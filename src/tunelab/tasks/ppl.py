"""The `ppl` task: token-weighted perplexity of a model on a text corpus (see `tunelab.metrics.perplexity`).

Files:

* `.txt`: one document per block of lines separated by blank lines (setting `documents: blocks`, the
  default), or the whole file as one document (`documents: file`);
* `.jsonl` / `.json`: one document per record, from its `text` field (a JSON array of records works too);
* a prepared corpus directory (`tunelab data corpus`): the blocks of one split (setting `split`, default
  `val`), scored as stored — the exact token ids, nothing re-tokenised; each block's first token is
  unscored and its final EOT counted, so with blocks that fit the window `perplexity` is exp(the
  trainer's validation loss) on the same blocks. `limit` (the recipe's / `tunelab eval --limit`) takes the
  first N blocks. The model's tokenizer must have the corpus tokenizer's vocabulary (checked).

Settings (recipe `options:` or `tunelab eval --window/--stride/--option ppl.documents=file`): `window`
(tokens per forward, default the model's context), `stride` (default window/2), `documents`,
`max_batch_tokens` (padded tokens per forward, default 4096).

Metrics: `perplexity` (lower is better), `nll_per_token`, `tokens` (tokens counted), `documents`,
`windows`, `window`, `stride`. The predictions file has one row per document (id, tokens, nll, perplexity).
On a corpus also `unigram_perplexity` on exactly the same scored positions (add-one smoothed token
frequencies of the corpus's train split: the bar a model must clear to have learned anything from
context), `blocks` and `split`; a row is a block (`where`: its document).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.perplexity import check_window, perplexity, scored_targets
from tunelab.records import iter_records, read_text, require_str
from tunelab.tasks.registry import Task, register_task

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def read_documents(path: str | Path, documents: str = "blocks") -> list[Example]:
    """The documents of a .txt or .jsonl/.json file as Examples (text in `instruction`)."""
    path = Path(path)
    if documents not in ("blocks", "file"):
        raise TunelabError(f"unknown documents setting '{documents}' (choose from blocks, file)",
                           field="documents")
    if path.suffix.lower() in (".jsonl", ".json"):
        docs = [(line, require_str(rec, "text", path, line)) for line, rec in iter_records(path)]
    else:
        text = read_text(path).replace("\r\n", "\n")
        if documents == "file":
            docs = [(1, text.strip("\n"))]
        else:
            docs, offset = [], 0
            for block in _BLANK_LINE.split(text):
                start = text.find(block, offset)
                offset = start + len(block)
                if block.strip():
                    first = start + len(block) - len(block.lstrip("\n"))  # the block's first non-empty line
                    docs.append((text.count("\n", 0, first) + 1, block.strip("\n")))
    docs = [(line, t) for line, t in docs if t.strip()]
    if not docs:
        raise TunelabError("no text to score", file=path)
    return [Example(id=f"{path.stem}-{i}", instruction=t, output="", kind=f"line {line}")
            for i, (line, t) in enumerate(docs)]


class CorpusSplit:
    """The blocks of one split of a prepared corpus, as the ppl task scores them."""

    def __init__(self, directory: str | Path, split: str):
        from tunelab.data.corpus.store import CorpusBlocks, read_docs_of
        self.dir = Path(directory)
        self.blocks = CorpusBlocks(self.dir, split)
        self.docs = read_docs_of(self.dir, self.blocks.index["doc"].tolist())
        self._tokenizer = None
        self._unigram = None

    def examples(self) -> list[Example]:
        out = []
        for i, doc in enumerate(self.blocks.index["doc"].tolist()):
            ident = self.docs.get(doc, {}).get("id")
            out.append(Example(id=f"{self.blocks.split}-{i}", instruction="", output="",
                               kind=f"doc {ident if ident is not None else doc}"))
        return out

    def block_of(self, example: Example):
        return self.blocks.block(int(example.id.rsplit("-", 1)[1]))

    def tokenizer(self):
        if self._tokenizer is None:
            from tunelab.model.loading import load_tokenizer
            self._tokenizer = load_tokenizer(str(self.blocks.tokenizer_dir()))
        return self._tokenizer

    def check_tokenizer(self, tokenizer) -> None:
        """The model must read the ids as the corpus wrote them: the same vocabulary, id for id."""
        if tokenizer.get_vocab() != self.tokenizer().get_vocab():
            raise TunelabError("the model's tokenizer is not the corpus's (different vocabulary): its token "
                               "ids would mean other text; evaluate a model trained on this corpus",
                               file=self.dir / "tokenizer")

    def unigram(self):
        """log-probabilities of the add-one smoothed unigram model of the train split (computed once)."""
        if self._unigram is None:
            from tunelab.data.corpus.store import CorpusBlocks
            from tunelab.metrics.perplexity import token_counts, unigram_logprobs
            vocab = max(int(self.blocks.meta.get("vocab_size") or 0), len(self.tokenizer()))
            train = CorpusBlocks(self.dir, "train")
            self._unigram = unigram_logprobs(token_counts(train.tokens, vocab))
        return self._unigram


@register_task
class PerplexityTask(Task):
    name = "ppl"
    primary_metric = "perplexity"
    higher_is_better = False
    modes = ("perplexity",)
    settings = ("window", "stride", "documents", "max_batch_tokens", "split")
    reads_corpus = True
    window: int | None = None
    stride: int | None = None
    documents = "blocks"
    max_batch_tokens = 4096
    split = "val"
    corpus: CorpusSplit | None = None

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        from tunelab.data.corpus.store import SPLITS
        if self.split not in SPLITS:
            raise TunelabError(f"unknown split '{self.split}' (choose from {', '.join(SPLITS)})", field="split")
        # checked here, before any model work; that the window fits the model's context is known only later
        check_window(self.window, self.stride)
        if type(self.max_batch_tokens) is not int or self.max_batch_tokens < 1:
            raise TunelabError(f"max_batch_tokens must be a whole number of at least 1 token, got "
                               f"{self.max_batch_tokens!r}", field="max_batch_tokens")
        return self

    def scored_with(self, window: int, stride: int) -> "PerplexityTask":
        """This task as it scored one model: a copy holding the window and stride it used (the model's context
        where none was given), which its grades and summary record. The configured task is unchanged, so the next
        model it scores fills in its own."""
        import copy
        scored = copy.copy(self)
        scored.window, scored.stride = window, stride
        return scored

    def load_examples(self, path: str | Path) -> list[Example]:
        from tunelab.data.corpus.store import is_corpus_dir
        if Path(path).is_dir():
            if not is_corpus_dir(path):
                from tunelab.data.corpus.store import read_meta
                read_meta(path)  # says why this folder is not a finished corpus
            self.corpus = CorpusSplit(path, self.split)
            examples = self.corpus.examples()
            if not examples:
                raise TunelabError(f"the corpus has no {self.split} blocks", file=path)
            return examples
        self.corpus = None
        return read_documents(path, self.documents)

    def document(self, example: Example) -> str:
        if self.corpus is not None:  # shown in the predictions file
            return self.corpus.tokenizer().decode(self.corpus.block_of(example).tolist())
        return example.instruction

    def token_ids(self, examples: list[Example], tokenizer) -> list:
        """What is scored, per example: a corpus's stored blocks, else the documents tokenised as the model
        encodes text (special tokens included)."""
        if self.corpus is not None:
            self.corpus.check_tokenizer(tokenizer)
            return [self.corpus.block_of(ex) for ex in examples]
        texts = [self.document(ex) for ex in examples]
        return tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def grade_perplexity(self, score, example: Example, ids=None) -> dict[str, Any]:
        g = {"tokens": score.tokens, "nll": score.nll, "windows": score.windows,
             "perplexity": perplexity(score.nll, score.tokens)}
        if self.corpus is not None and ids is not None:
            targets = scored_targets(ids, self.window, self.stride)
            g["unigram_nll"] = -float(self.corpus.unigram()[targets.astype("int64")].sum())
            g["doc"] = example.kind
        return g

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        nll = sum(g["nll"] for g in graded)
        tokens = sum(g["tokens"] for g in graded)
        if not tokens:
            raise TunelabError("no token could be scored (every document is a single token)", field="ppl")
        out = {"n": len(graded), "documents": len(graded), "tokens": tokens,
               "windows": sum(g["windows"] for g in graded), "nll_per_token": nll / tokens,
               "perplexity": math.exp(nll / tokens), "window": self.window, "stride": self.stride}
        if self.corpus is not None:
            unigram = sum(g["unigram_nll"] for g in graded)
            out.update({"blocks": len(graded), "documents": len({g["doc"] for g in graded}), "split": self.split,
                        "unigram_nll_per_token": unigram / tokens, "unigram_perplexity": math.exp(unigram / tokens),
                        "corpus": str(self.corpus.dir)})
        return out
