"""The `rougel` task: free-text generation scored by Rouge-L F (`tunelab.eval.rouge`) against the reference
output(s).

Data: alpaca/reading/conversations/messages files, or QA records {question, answer | answers}
(`read_rouge_examples`; every answer is a reference, the best one counts). Setting `segmentation`
(auto|char|jieba|word; `tunelab eval --segmentation`) is recorded in the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.formats import read_examples
from tunelab.data.records import iter_records, require_str
from tunelab.errors import TunelabError
from tunelab.eval.rouge import resolve_segmentation, rouge_l, summarize_rouge
from tunelab.tasks.registry import Task, register_task


def read_rouge_examples(path: str | Path) -> list[Example]:
    """Examples for the rougel task: QA records `{question, answer}` or `{question, answers: [...]}` (every
    answer is a reference), else any training format (alpaca, reading, conversations, messages, …)."""
    path = Path(path)
    records = list(iter_records(path))
    first = records[0][1] if records else {}
    if "question" not in first or "context" in first or not ({"answer", "answers"} & first.keys()):
        return read_examples(path, "auto")
    out = []
    for index, (line, rec) in enumerate(records):
        question = require_str(rec, "question", path, line)
        if "answers" in rec:
            answers = rec["answers"]
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise TunelabError("expected a non-empty list of strings", file=path, line=line, field="answers")
        else:
            answers = [require_str(rec, "answer", path, line)]
        ident = require_str(rec, "id", path, line) if "id" in rec else f"{path.stem}-{index}"
        kind = require_str(rec, "kind", path, line) if "kind" in rec else ""
        out.append(Example(id=ident, instruction=question, output=answers[0], kind=kind, answers=list(answers)))
    return out


@register_task
class RougeLTask(Task):
    """An item is `correct` when its Rouge-L F is 1 (every token matched, in order)."""

    name = "rougel"
    primary_metric = "rougeL_f"
    default_format = "alpaca"
    settings = ("segmentation",)
    segmentation = "auto"

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        resolve_segmentation(self.segmentation)  # an unknown name fails before any model work
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_rouge_examples(path)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        golds = example.answers or [example.output]
        s = rouge_l(prediction.strip(), golds, self.segmentation)
        return {"correct": s["fmeasure"] == 1.0, "rougeL_f": s["fmeasure"], "rougeL_p": s["precision"],
                "rougeL_r": s["recall"], "segmentation": s["segmentation"], "kind": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        scores = [{"fmeasure": g["rougeL_f"], "precision": g["rougeL_p"], "recall": g["rougeL_r"],
                   "segmentation": g["segmentation"]} for g in graded]
        return {**summarize_rouge(scores, self.segmentation), "segmentation_requested": self.segmentation}
