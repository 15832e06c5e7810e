"""The `ppl` task: token-weighted perplexity of a model on a text corpus (see `tunelab.eval.perplexity`).

Files:

* `.txt`: one document per block of lines separated by blank lines (setting `documents: blocks`, the
  default), or the whole file as one document (`documents: file`);
* `.jsonl` / `.json`: one document per record, from its `text` field (a JSON array of records works too).

Settings (recipe `options:` or `tunelab eval --window/--stride/--option ppl.documents=file`): `window`
(tokens per forward, default the model's context), `stride` (default window/2), `documents`,
`max_batch_tokens` (padded tokens per forward, default 4096).

Metrics: `perplexity` (lower is better), `nll_per_token`, `tokens` (tokens counted), `documents`,
`windows`, `window`, `stride`. The predictions file has one row per document (id, tokens, nll, perplexity).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.records import iter_records, read_text, require_str
from tunelab.errors import TunelabError
from tunelab.eval.perplexity import perplexity
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


@register_task
class PerplexityTask(Task):
    name = "ppl"
    primary_metric = "perplexity"
    higher_is_better = False
    modes = ("perplexity",)
    settings = ("window", "stride", "documents", "max_batch_tokens")
    window: int | None = None
    stride: int | None = None
    documents = "blocks"
    max_batch_tokens = 4096

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_documents(path, self.documents)

    def document(self, example: Example) -> str:
        return example.instruction

    def grade_perplexity(self, score, example: Example) -> dict[str, Any]:
        return {"tokens": score.tokens, "nll": score.nll, "windows": score.windows,
                "perplexity": perplexity(score.nll, score.tokens)}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        nll = sum(g["nll"] for g in graded)
        tokens = sum(g["tokens"] for g in graded)
        if not tokens:
            raise TunelabError("no token could be scored (every document is a single token)", field="ppl")
        return {"n": len(graded), "documents": len(graded), "tokens": tokens,
                "windows": sum(g["windows"] for g in graded), "nll_per_token": nll / tokens,
                "perplexity": math.exp(nll / tokens), "window": self.window, "stride": self.stride}
