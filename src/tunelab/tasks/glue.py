"""GLUE CoLA and QQP as generation tasks: a strict label parser, accuracy/MCC/F1 and the exam rubric.

Label parser (`parse_label`): the first non-blank line of the generation, NFKC-normalised, lower-cased,
without a leading "answer:", "label:", "output:", "答案：", "答案是" and without surrounding quotes, brackets
and end punctuation, must be one of

    1: "1", "yes", "是", "acceptable" (CoLA), "duplicate" (QQP)
    0: "0", "no", "否", "不是", "unacceptable" (CoLA), "not duplicate" / "not_duplicate" (QQP)

or start with one of them followed by punctuation or a space ("1 (acceptable)", "No, they differ"; "是的").
Anything else is `unparsed`: counted as wrong, reported, never mapped to a label. In MCC and F1 an
unparsed answer counts as the label opposite to the gold one.

Log-likelihood mode (`--mode loglik`): the two label words (setting `label_words`, default "0,1" as the
default instructions ask; index = label) are scored as continuations of the prompt and the likelier one is
the prediction — no parser, nothing unparsed.

Evaluation files: a labelled GLUE TSV (default instruction) or a pre_data JSON such as {task}_val.json
(the record's own instruction).

Metrics: accuracy for both; Matthews correlation for CoLA; F1 of the positive class (duplicate = 1) for
QQP. MCC is 0 when any row or column of the confusion matrix is empty (sklearn's convention).

Rubric (`tunelab grade glue --pre-data DIR --model-dir DIR`): 10 points when the pre_data files exist and
parse ({task}_train.json and {task}_dev.json under DIR/{task}/ or DIR itself, and {task}_val.json when
present: JSON arrays of objects with string instruction, input, output, train non-empty); 20 points when
the model directory holds a config.json that parses and at least one non-empty weight file (*.safetensors,
*.bin, *.ckpt, *.pt, *.pth, *.gguf, *.h5, *.msgpack; training state such as training_args.bin or
optimizer.pt does not count) — files are only checked, never loaded; 70 × accuracy.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.data.glue import canonical_task, read_glue_tsv
from tunelab.errors import TunelabError
from tunelab.records import iter_records, read_text, require_str
from tunelab.tasks.registry import Task, register_task

_COMMON = {"1": 1, "yes": 1, "是": 1, "0": 0, "no": 0, "否": 0, "不是": 0}
VOCAB = {
    "CoLA": {**_COMMON, "acceptable": 1, "unacceptable": 0},
    "QQP": {**_COMMON, "duplicate": 1, "not duplicate": 0, "not_duplicate": 0},
}
_PREFIX = re.compile(r"^(?:answer|label|output|prediction)\s*[:=]\s*|^答案\s*(?:[:]|是|为)\s*")
_STRIP = " \t\"'“”‘’「」『』()[]【】<>.。!！,，;；:"
_WEIGHTS = ("*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack")
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|scaler|rng_state.*|trainer_state)\.")


def parse_label(text: str, task: str) -> int | None:
    """1, 0 or None (unparsed) for a generation; see the module docstring."""
    vocab = VOCAB[canonical_task(task)]
    line = next((ln for ln in unicodedata.normalize("NFKC", text).split("\n") if ln.strip()), "")
    s = _PREFIX.sub("", line.strip().lower()).strip(_STRIP)
    s = " ".join(s.split())
    if s in vocab:
        return vocab[s]
    for word in sorted(vocab, key=len, reverse=True):  # longest first: "not duplicate" before "no"
        if s.startswith(word) and len(s) > len(word):
            nxt = s[len(word)]
            if nxt.isspace() or nxt in _STRIP or nxt in "，。、；：？！?" or (not word.isascii() and nxt == "的"):
                return vocab[word]
    return None


def confusion(pairs: list[tuple[int | None, int]]) -> dict[str, int]:
    """tp/fp/tn/fn of (pred, gold) pairs, an unparsed pred counting as the opposite of the gold label."""
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for pred, gold in pairs:
        p = 1 - gold if pred is None else pred
        c[("t" if p == gold else "f") + ("p" if p == 1 else "n")] += 1
    return c


def matthews(c: dict[str, int]) -> float:
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def f1_positive(c: dict[str, int]) -> float:
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    return 2 * c["tp"] / denom if denom else 0.0


def glue_metrics(preds: list[int | None], golds: list[int], task: str) -> dict[str, Any]:
    task = canonical_task(task)
    n = len(golds)
    c = confusion(list(zip(preds, golds)))
    out: dict[str, Any] = {"task": task, "n": n,
                           "accuracy": sum(p == g for p, g in zip(preds, golds)) / n if n else 0.0,
                           "unparsed": sum(p is None for p in preds)}
    out["unparsed_rate"] = out["unparsed"] / n if n else 0.0
    if task == "CoLA":
        out["mcc"] = matthews(c)
    else:
        out["f1"] = f1_positive(c)
    out["confusion"] = c
    return out


def read_glue_examples(path: str | Path, task: str, require_labels: bool = True) -> list[Example]:
    """A GLUE TSV (default instruction) or a pre_data JSON/JSONL file ({instruction, input, output}) as
    Examples in file order; `output` is the label ("" when the file has none)."""
    from tunelab.data.formats import read_examples
    from tunelab.data.glue import INSTRUCTIONS, glue_input
    task, path = canonical_task(task), Path(path)
    if path.suffix.lower() == ".tsv":
        rows = read_glue_tsv(path, task)
        examples = [Example(id=r.id or f"{path.stem}-{r.line}", instruction=INSTRUCTIONS[task],
                            input=glue_input(task, r), output=r.label or "", kind=task.lower()) for r in rows]
    else:
        examples = read_examples(path, "alpaca")
    if require_labels:
        for i, ex in enumerate(examples):
            if not ex.output.strip():
                raise TunelabError(f"the file has no labels to grade against (example {i + 1}, '{ex.id}')",
                                   file=path, field="output")
    return examples


class _GlueTask(Task):
    glue_name: str
    primary_metric = "accuracy"
    right_or_wrong = True
    vote = "pred"
    default_format = "alpaca"  # the pre_data files
    modes = ("generate", "loglik")
    settings = ("label_words",)
    label_words: Any = ("0", "1")

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        self.words()  # two label words, checked before any model work
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        """A labelled GLUE TSV or pre_data JSON as Examples (see `read_glue_examples`)."""
        return read_glue_examples(path, self.glue_name)

    def _gold(self, example: Example) -> int:
        gold = parse_label(example.output, self.glue_name)
        if gold is None:
            raise TunelabError(f"gold label {example.output!r} is not a {self.glue_name} label "
                               f"(example '{example.id}')", field="output")
        return gold

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        gold = self._gold(example)
        pred = parse_label(prediction, self.glue_name)
        return {"correct": pred == gold, "pred": pred, "gold": gold, "unparsed": pred is None}

    def words(self) -> list[str]:
        """The two label continuations, label 0 first."""
        words = self.label_words
        if isinstance(words, str):
            words = [w.strip() for w in words.split(",")]
        words = [str(w) for w in words] if isinstance(words, (list, tuple)) else []  # YAML reads `yes` as True
        if len(words) != 2 or not all(words):
            raise TunelabError(f"label_words needs two words (label 0, label 1), got {self.label_words!r}",
                               field="label_words")
        return words

    def loglik_requests(self, example: Example, prompt: str) -> list[tuple[str, str]]:
        return [(prompt, w) for w in self.words()]

    def predict_loglik(self, results: list) -> int:
        return int(results[1].logprob > results[0].logprob)

    def grade_loglik(self, results: list, example: Example) -> dict[str, Any]:
        gold = self._gold(example)
        pred = self.predict_loglik(results)
        return {"correct": pred == gold, "pred": pred, "gold": gold, "unparsed": False,
                "logprobs": [r.logprob for r in results]}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        return glue_metrics([g["pred"] for g in graded], [g["gold"] for g in graded], self.glue_name)


@register_task
class ColaTask(_GlueTask):
    name = "cola"
    glue_name = "CoLA"


@register_task
class QqpTask(_GlueTask):
    name = "qqp"
    glue_name = "QQP"


# --- the rubric -----------------------------------------------------------------------------------

def check_pre_data(pre_dir: str | Path, task: str) -> list[str]:
    """Problems with the pre_data files (empty list: valid)."""
    task, pre_dir = canonical_task(task), Path(pre_dir)
    folder = pre_dir / task if (pre_dir / task).is_dir() else pre_dir
    problems = []
    for split in ("train", "dev", "val"):
        path = folder / f"{task}_{split}.json"
        if not path.is_file():
            if split != "val":
                problems.append(f"{path} is missing")
            continue
        try:
            if not read_text(path).lstrip().startswith("["):
                raise TunelabError("expected a JSON array", file=path)
            n = 0
            for line, rec in iter_records(path):
                for name in ("instruction", "input", "output"):
                    require_str(rec, name, path, line)
                n += 1
            if n == 0 and split == "train":
                problems.append(f"{path} has no records")
        except TunelabError as e:
            problems.append(str(e))
    return problems


def check_model_dir(model_dir: str | Path) -> list[str]:
    """Problems with a saved model directory (empty list: config.json and weights are there)."""
    d = Path(model_dir)
    if not d.is_dir():
        return [f"{d} is not a directory"]
    problems = []
    config = d / "config.json"
    if not config.is_file():
        problems.append(f"{config} is missing")
    else:
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                problems.append(f"{config} is not a JSON object")
        except (ValueError, RecursionError) as e:  # malformed JSON or bytes, nested too deeply, a huge number
            problems.append(f"{config} does not parse ({str(e)[:200]})")
    weights = [p for pattern in _WEIGHTS for p in d.glob(pattern)
               if p.is_file() and p.stat().st_size > 0 and not _NOT_WEIGHTS.match(p.name)]
    if not weights:
        problems.append(f"no weight file in {d} ({', '.join(_WEIGHTS)})")
    return problems


def rubric(accuracy: float, pre_data_problems: list[str] | None, model_problems: list[str] | None) -> dict:
    """Points: 10 valid pre_data, 20 saved model, 70 × accuracy; None = not checked (0 points)."""
    pre = None if pre_data_problems is None else (0 if pre_data_problems else 10)
    model = None if model_problems is None else (0 if model_problems else 20)
    acc = 70 * accuracy
    return {"pre_data": pre, "model": model, "accuracy": acc, "total": (pre or 0) + (model or 0) + acc,
            "pre_data_problems": pre_data_problems, "model_problems": model_problems}


# --- `tunelab grade glue` ------------------------------------------------------------------------

def read_label_lines(path: str | Path, expected: int | None = None) -> list[tuple[int, str]]:
    """(line, text) per line of a prediction/answer file: one per line, or GLUE's submission format with
    the header "index<TAB>prediction" (the last column is used). Trailing blank lines are dropped, but
    only down to `expected` lines (a blank last prediction is an answer too)."""
    path = Path(path)
    lines = read_text(path).split("\n")
    if lines[-1] == "":  # the final newline ends the last line; it does not start another
        lines.pop()
    numbered = [(i, ln.rstrip("\r")) for i, ln in enumerate(lines, start=1)]
    if numbered and numbered[0][1].strip().lower().replace(" ", "") in ("index\tprediction", "index\tlabel"):
        numbered = [(i, ln.split("\t")[-1]) for i, ln in numbered[1:]]
    while numbered and not numbered[-1][1].strip() and (expected is None or len(numbered) > expected):
        numbered.pop()
    return numbered


def read_gold_labels(path: str | Path, task: str) -> list[int]:
    """Gold labels from an answers file (one label per line), a labelled GLUE TSV or a pre_data JSON."""
    path, task = Path(path), canonical_task(task)
    text = read_text(path)
    if path.suffix == ".tsv":
        rows = read_glue_tsv(path, task)
        if rows[0].label is None:
            raise TunelabError("the file has no labels", file=path)
        return [int(r.label) for r in rows]  # type: ignore[arg-type]
    if path.suffix in (".json", ".jsonl") or text.lstrip().startswith(("[", "{")):
        items = [(line, require_str(rec, "output", path, line)) for line, rec in iter_records(path)]
    else:
        items = read_label_lines(path)
    golds = []
    for line, value in items:
        label = parse_label(value, task)
        if label is None:
            raise TunelabError(f"not a {task} label: {value!r}", file=path, line=line)
        golds.append(label)
    if not golds:
        raise TunelabError("no labels", file=path)
    return golds


def grade_glue_files(task: str, pred: str | Path, gold: str | Path, pre_data: str | Path | None = None,
                     model_dir: str | Path | None = None) -> dict[str, Any]:
    """`tunelab grade glue`: generated labels (one a line) against gold labels; `glue_metrics`, the exam rubric
    (the pre_data folder and the saved model checked when given) and the first unparsed lines."""
    task = canonical_task(task)
    golds = read_gold_labels(gold, task)
    pred_lines = read_label_lines(pred, expected=len(golds))
    if len(pred_lines) != len(golds):
        raise TunelabError(f"{len(pred_lines)} predictions in {pred}, {len(golds)} gold labels in {gold}")
    preds = [parse_label(text, task) for _, text in pred_lines]
    metrics = glue_metrics(preds, golds, task)
    pre_problems = check_pre_data(pre_data, task) if pre_data else None
    model_problems = check_model_dir(model_dir) if model_dir else None
    metrics["rubric"] = rubric(metrics["accuracy"], pre_problems, model_problems)
    metrics["unparsed_lines"] = [line for (line, _), p in zip(pred_lines, preds) if p is None][:20]
    return metrics
