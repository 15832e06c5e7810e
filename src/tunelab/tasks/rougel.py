"""The `rougel` task: free-text generation scored by Rouge-L F (`tunelab.metrics.rouge`) against the reference
output(s).

Data: alpaca/reading/conversations/messages files, or QA records {question, answer | answers}
(`read_rouge_examples`; every answer is a reference, the best one counts). Setting `segmentation`
(auto|char|jieba|word; `tunelab eval --segmentation`) is recorded in the results.

Besides Rouge-L: `exact` (share of answers with F = 1), `stop_rate` — the share of answers that ended with a
stop token (EOT, the chat template's end of turn) or stop string before `max_new_tokens`, as the runner
reports each answer's finish reason: what supervised fine-tuning must teach a pretrained model, which
otherwise writes on to the length limit — and `answer_chars` (mean answer length). `samples` (default 5)
answers are kept in the metrics ({id, question, answer, reference, finish_reason}) for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.formats import read_examples
from tunelab.errors import TunelabError
from tunelab.metrics.rouge import resolve_segmentation, rouge_l, summarize_rouge
from tunelab.records import iter_records, require_str
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
    settings = ("segmentation", "samples")
    segmentation = "auto"
    samples = 5

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        resolve_segmentation(self.segmentation)  # an unknown name fails before any model work
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise TunelabError(f"samples must be a whole number >= 0, got {self.samples!r}", field="samples")
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_rouge_examples(path)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        golds = example.answers or [example.output]
        s = rouge_l(prediction.strip(), golds, self.segmentation)
        return {"id": example.id, "correct": s["fmeasure"] == 1.0, "rougeL_f": s["fmeasure"],
                "rougeL_p": s["precision"], "rougeL_r": s["recall"], "segmentation": s["segmentation"],
                "kind": example.kind, "question": example.instruction, "answer": prediction,
                "reference": golds[0]}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        scores = [{"fmeasure": g["rougeL_f"], "precision": g["rougeL_p"], "recall": g["rougeL_r"],
                   "segmentation": g["segmentation"]} for g in graded]
        n = len(graded)
        ended = [g["finish_reason"] for g in graded if "finish_reason" in g]
        return {**summarize_rouge(scores, self.segmentation), "segmentation_requested": self.segmentation,
                "exact": sum(g["correct"] for g in graded) / n if n else 0.0,
                "stop_rate": ended.count("stop") / len(ended) if ended else None,
                "answer_chars": sum(len(g["answer"]) for g in graded) / n if n else 0.0,
                "samples": [{"id": g["id"], "question": g["question"], "answer": g["answer"],
                             "reference": g["reference"], "finish_reason": g.get("finish_reason")}
                            for g in graded[: self.samples]]}
