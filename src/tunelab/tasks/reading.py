"""The reading task: extract the answer span from a short context (the tiny base's original ability).

Graded with extractive-QA EM/F1 (CMRC-style for Chinese, SQuAD-official for English); only the first line
of the generation counts, as in MindFormers' SQuAD evaluation.
"""

from __future__ import annotations

from tunelab.data.examples import Example
from tunelab.metrics.qa_metrics import em_f1
from tunelab.tasks.registry import Task, register_task


@register_task
class ReadingTask(Task):
    name = "reading"
    primary_metric = "f1"
    ability = True
    default_format = "reading"

    def grade(self, prediction: str, example: Example) -> dict:
        answer = prediction.strip().split("\n")[0].strip()
        em, f1 = em_f1(answer, example.output)
        return {"correct": bool(em), "em": em, "f1": f1, "kind": example.kind}

    def summarize(self, graded: list[dict]) -> dict:
        n = len(graded)
        by_kind: dict[str, list[dict]] = {}
        for g in graded:
            by_kind.setdefault(g.get("kind") or "all", []).append(g)
        def agg(items):
            return {"n": len(items), "exact_match": 100 * sum(g["em"] for g in items) / max(1, len(items)),
                    "f1": 100 * sum(g["f1"] for g in items) / max(1, len(items))}
        out = agg(graded)
        out["by_kind"] = {k: agg(v) for k, v in sorted(by_kind.items())}
        out["n"] = n
        return out
