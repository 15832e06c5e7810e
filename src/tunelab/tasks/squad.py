"""SQuAD v1.1: read the official JSON, grade generations, and grade official prediction files.

Data: `{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text"}, ...]}]}]}]}`.
`read_squad` turns every question into an Example: the instruction is the project's reading prompt
(`formats.reading_instruction`: "Read the passage and answer the question.\\n{context}\\nQuestion: {question}",
or its Chinese form for a Chinese passage), `output` is the first gold answer and `answers` all of them
(duplicates kept, as in the file).

Scorers (see `tunelab.metrics.qa_metrics` for each one's reference script), each 0–100 over all questions, a
question without a prediction scoring 0:

* `official`: evaluate-v1.1.py — max EM/F1 over all gold answers; the prediction is scored as given.
* `cmrc`: cmrc2018_evaluate.py (Chinese-aware); `auto` (the default) picks it when the gold holds CJK text,
  `official` otherwise.
* `mindformers`: MindFormers' fine-tuning recipe — its SQuAD preprocessing keeps only the first question of
  each paragraph and that question's first answer; only the first line of the prediction counts; scored with
  EmF1Metric. `n` is then the number of paragraphs (2,067 in dev-v1.1.json, the competition's count).

The `squad` task grades a generation's first line. Its setting `scorer` (default `auto`; a recipe's
`options: {scorer: mindformers}`, or `--option squad.scorer=mindformers`) chooses the scorer of its `f1` and
`exact_match` — the numbers the retention verdict compares — and, for `mindformers`, MindFormers' selection
of questions; the results name it (`scorer`). With another scorer the task also reports MindFormers' EmF1 on
each question's first gold (`mindformers_f1`, `mindformers_exact_match`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.formats import reading_instruction
from tunelab.errors import TunelabError
from tunelab.records import read_json
from tunelab.metrics.qa_metrics import (SCORERS, em_f1, em_f1_mindformers, first_line, has_cjk,
                                     resolve_mode)
from tunelab.tasks.registry import Task, register_task


@dataclass
class SquadQuestion:
    id: str
    question: str
    context: str
    answers: list[str]
    first_in_paragraph: bool  # the question MindFormers' preprocessing keeps


def _line_of(text: str, qid: str) -> int | None:
    """Best-effort line of the question's "id" in the file, for error messages."""
    pos = text.find(json.dumps(qid, ensure_ascii=False))
    if pos < 0:
        pos = text.find(json.dumps(qid))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else None


def _list(obj: Any, key: str, path: Path, where: str) -> list:
    if not isinstance(obj, dict) or key not in obj:
        raise TunelabError(f"{where} has no '{key}' list (expected SQuAD v1.1 JSON)", file=path, field=key)
    value = obj[key]
    if not isinstance(value, list):
        raise TunelabError(f"{where}: '{key}' must be a list, got {type(value).__name__}", file=path, field=key)
    return value


def read_squad_questions(path: str | Path) -> list[SquadQuestion]:
    """Every question of a SQuAD v1.1 file, in file order; structural errors name the file and question id."""
    path = Path(path)
    text, doc = read_json(path)
    questions: list[SquadQuestion] = []
    seen: set[str] = set()
    for a, article in enumerate(_list(doc, "data", path, "the file")):
        for p, para in enumerate(_list(article, "paragraphs", path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str):
                raise TunelabError(f"{where} has no 'context' string", file=path, field="context")
            for q, qa in enumerate(_list(para, "qas", path, where)):
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), (str, int)):
                    raise TunelabError(f"{where}.qas[{q}] has no 'id'", file=path, field="id")
                qid = str(qa["id"])
                line = _line_of(text, qid)
                if qid in seen:
                    raise TunelabError(f"question id '{qid}' appears twice", file=path, line=line, field="id")
                seen.add(qid)
                if not isinstance(qa.get("question"), str):
                    raise TunelabError(f"question '{qid}' has no 'question' string", file=path, line=line,
                                       field="question")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise TunelabError(f"question '{qid}' has no 'answers' list", file=path, line=line,
                                       field="answers")
                if not answers:
                    raise TunelabError(f"question '{qid}' has an empty 'answers' list (unanswerable "
                                       "SQuAD v2.0 questions are not supported)", file=path, line=line,
                                       field="answers")
                texts = []
                for ans in answers:
                    if not isinstance(ans, dict) or not isinstance(ans.get("text"), str):
                        raise TunelabError(f"question '{qid}': every answer needs a 'text' string", file=path,
                                           line=line, field="answers")
                    texts.append(ans["text"])
                questions.append(SquadQuestion(qid, qa["question"], context, texts, first_in_paragraph=q == 0))
    if not questions:
        raise TunelabError("no questions", file=path)
    return questions


def squad_examples(questions: list[SquadQuestion], *, mindformers: bool = False) -> list[Example]:
    """Examples for the questions; `mindformers=True` keeps MindFormers' selection (first question of each
    paragraph, its first answer only)."""
    out = []
    for q in questions:
        if mindformers and not q.first_in_paragraph:
            continue
        answers = q.answers[:1] if mindformers else list(q.answers)
        lang = "zh" if has_cjk(q.context) else "en"
        out.append(Example(id=q.id, instruction=reading_instruction(q.context, q.question), output=answers[0],
                           kind=f"squad-{lang}", answers=answers))
    return out


def read_squad(path: str | Path, *, mindformers: bool = False) -> list[Example]:
    """A SQuAD v1.1 file as Examples (see `squad_examples`)."""
    return squad_examples(read_squad_questions(path), mindformers=mindformers)


def score_squad(predictions: dict[str, str], questions: list[SquadQuestion], scorer: str = "auto") -> dict:
    """EM and F1 (0–100) of `{question_id: answer}` predictions under one scorer (see the module docstring)."""
    if scorer == "mindformers":
        chosen = [q for q in questions if q.first_in_paragraph]
    else:
        chosen = questions
        resolved = resolve_mode(scorer, [a for q in questions for a in q.answers])
    em_total = f1_total = 0.0
    missing = 0
    for q in chosen:
        if q.id not in predictions:
            missing += 1
            continue
        if scorer == "mindformers":
            em, f1 = em_f1_mindformers(first_line(predictions[q.id]), q.answers[0])
        else:
            em, f1 = em_f1(predictions[q.id], q.answers, resolved)
        em_total += em
        f1_total += f1
    n = len(chosen)
    out = {"scorer": scorer if scorer != "auto" else resolved, "n": n,
           "exact_match": 100 * em_total / n if n else 0.0, "f1": 100 * f1_total / n if n else 0.0,
           "missing": missing}
    if scorer == "auto":
        out["auto"] = True
    return out


@register_task
class SquadTask(Task):
    """Extractive QA on SQuAD: the generation's first line against the gold answers, under `scorer`."""

    name = "squad"
    primary_metric = "f1"
    ability = True  # the original ability the competition checks (>= 90 % of the base's F1 and EM)
    default_format = "reading"  # reading-format records work directly; SQuAD JSON goes through read_squad
    settings = ("scorer",)
    scorer = "auto"

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        if self.scorer not in ("auto", *SCORERS):  # before any model work
            raise TunelabError(f"unknown scorer {self.scorer!r} (choose from auto, {', '.join(SCORERS)})",
                               field="scorer")
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        return read_squad(path, mindformers=self.scorer == "mindformers")

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        answer = first_line(prediction)
        golds = example.answers or [example.output]
        mf_em, mf_f1 = em_f1_mindformers(answer, golds[0])
        if self.scorer == "mindformers":
            return {"correct": bool(mf_em), "em": mf_em, "f1": mf_f1, "kind": example.kind}
        em, f1 = em_f1(answer, golds, self.scorer)
        return {"correct": bool(em), "em": em, "f1": f1, "mindformers_em": mf_em, "mindformers_f1": mf_f1,
                "kind": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(graded)

        def pct(key: str) -> float:
            return 100 * sum(g[key] for g in graded) / n if n else 0.0

        out = {"n": n, "scorer": self.scorer, "exact_match": pct("em"), "f1": pct("f1")}
        if self.scorer != "mindformers":
            out.update(mindformers_exact_match=pct("mindformers_em"), mindformers_f1=pct("mindformers_f1"))
        return out


# --- `tunelab grade squad` -----------------------------------------------------------------------

def read_predictions(path: str | Path) -> dict[str, str]:
    """The official prediction format: one JSON object {question_id: answer}."""
    path = Path(path)
    text, doc = read_json(path)
    if not isinstance(doc, dict):
        raise TunelabError("expected one JSON object {question_id: answer} (SQuAD's prediction format)",
                           file=path)
    for qid, answer in doc.items():
        if not isinstance(answer, str):
            raise TunelabError(f"the answer for '{qid}' is a {type(answer).__name__}, not a string",
                               file=path, line=_line_of(text, qid), field=qid)
    return doc


def grade_squad_files(pred: str | Path, gold: str | Path, scorers: list[str]) -> dict[str, Any]:
    """`tunelab grade squad`: an official prediction JSON against SQuAD v1.1 gold, by each of `scorers`.
    Returns {"questions": how many, "results": {scorer: its EM/F1 result}, "unknown_ids": predictions whose ids
    the gold file does not hold}."""
    questions = read_squad_questions(gold)
    predictions = read_predictions(pred)
    return {"questions": len(questions), "results": {s: score_squad(predictions, questions, s) for s in scorers},
            "unknown_ids": len(set(predictions) - {q.id for q in questions})}
