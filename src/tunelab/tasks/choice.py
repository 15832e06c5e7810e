"""Multiple choice: read question files, build prompts, extract the chosen option from a generation, grade.

Input (JSON array or JSONL), one question per record:

* `{"question", "A", "B", "C", "D", "answer"}` — options under consecutive letter keys from "A" (2–26 of them);
* `{"question", "choices": [...], "answer"}`.

`answer` is a letter ("B", case-insensitive) or a 0-based index (1 or "1" = B). Optional `id` (default
"<file stem>-<index>") and `kind`. Errors name file, line and field. The records are read by the `choice`
format of `tunelab.data.formats` into Examples that keep the options as data (`Example.choices`, exactly as
written: no normalisation, newlines allowed) and the answer's index (`Example.label`).

Prompt (`tunelab.data.formats.choice_prompt`; the language is Chinese when the question or an option holds
CJK text, else English, or forced with lang="zh"/"en"), rendered from the question and the options and never
read back:

    以下是一道单项选择题，请选出正确答案，只回答选项字母。
    {question}
    A. {option A}
    B. {option B} ...

    The following is a multiple-choice question. Answer with the letter of the correct option.
    {question}
    A. {option A} ...

An alpaca record {instruction, input, output, choices, answer} carries its question's options and answer too, and
the `choice` task grades such a file directly from its `choices` and `answer` (an alpaca record without them is
an error, not a guess from the prompt). Training on questions reads the question records themselves
(`data.choice_rows.choice_training`: `answer_style`, `shuffle_options`).

Extraction (`extract_choice`), after NFKC normalisation (full-width "Ｂ", "（", "：" read as ASCII). Only
letters of the question's options count; the first rule that finds one decides (the rule is reported):

0. own: the answer starts with an option's own text followed by that option's bracketed letter — "仓鼠 (D)",
   "A. Lincoln (B)" — the `text_letter` answer a model is taught; the longest such option when several fit.
   First, because an option's text may itself hold what a later rule reads as a letter ("答案：A", "Plan B").
1. marker: a letter after an answer marker — "答案：B", "答案是B", "正确答案为（C）", "选B", "应选择 C",
   "The answer is (C)", "Answer: c.", "I choose D". The first marker in the text wins.
2. leading: the text starts with a letter followed by the end, punctuation or non-Latin text ("B.",
   "B)", "(B)", "B、", "B是…"), or by white space and anything but an English word that makes an "A" the
   article ("B 北京", "B Paris", "B is right", "A is right"; not "A cat sat…" unless option A's own text
   starts "cat sat").
3. mention: a bracketed letter or a named option anywhere — "(C)", "【C】", "选项C", "C项", "option C".
4. text: the whole answer is one option's text ("Paris", "paris.").
5. contains: exactly one option's text occurs in the answer as a whole word (when several occur and one
   contains all the others, that one).
6. letter: the first free-standing capital letter; an "A" followed by an English word that is not a
   verb like "is" ("A cat…") is skipped as the article.

Nothing found: the answer is `unparsed` (counted wrong and reported).

Log-likelihood mode (`tunelab eval --mode loglik`, recipe `mode: loglik`), lm-eval style: every option is
scored as a continuation of the same prompt (`tunelab.metrics.loglik`) and the highest total log-probability
wins — no extraction, nothing unparsed. The continuation (setting `continuation`) is the option letter
("B", default: what the prompt asks for and the default `answer_style` trains), the option text exactly as
written in the question file ("Paris", "５㎏…", "line one\nline two"), or both ("B. Paris" as `letter_text`,
"Paris (B)" as `text_letter`): each answer style is scored by the continuation of its name. The metrics
are lm-evaluation-harness's (`ConfigurableTask.process_results`, multiple_choice, in lm_eval/api/task.py
at commit 4e7e0d47, 2026-08): `accuracy` (also reported as `acc`) is right when numpy.argmax of the summed
log-probabilities is the answer, `acc_norm` when numpy.argmax of each log-probability divided by
float(len(continuation)) — its length in characters (code points) — is; ties go to the first option and a
NaN wins as numpy's argmax has it. With single-letter continuations acc_norm equals acc. An empty option
cannot be a text continuation (lm-eval would divide by zero): that is an error naming the example.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

from tunelab.data.choice_rows import choice_continuations
from tunelab.data.examples import Example
from tunelab.data.formats import LETTERS, choice_fields, choice_record, read_examples
from tunelab.errors import TunelabError
from tunelab.records import iter_records, require_str
from tunelab.tasks.registry import Task, register_task

RULES = ("own", "marker", "leading", "mention", "text", "contains", "letter")
# Words after a sentence-initial "A" that make it the option letter rather than the article.
_VERBS = {"is", "was", "seems", "looks", "appears", "should", "would", "must", "can", "could", "will",
          "and", "or", "because", "since", "as"}


# --- reading question files ----------------------------------------------------------------------

def choice_examples(records: Iterable[dict[str, Any]], lang: str = "auto") -> list[Example]:
    """In-memory question records as Examples (prompt in `lang`, "auto" = the question's language)."""
    return [Example(id=require_str(rec, "id", "records", i + 1) if "id" in rec else f"records-{i}",
                    **choice_record(rec, Path("records"), i + 1, lang))
            for i, rec in enumerate(records)]


# --- extraction ----------------------------------------------------------------------------------

def _norm_text(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower().strip()
    s = s.strip(" \t\n\"'“”‘’「」『』")
    s = re.sub(r"[.。!！?？,，;；:：]+$", "", s).strip()
    return " ".join(s.split())


def _bounded(needle: str, hay: str) -> bool:
    """`needle` occurs in `hay` not glued to a Latin letter or digit on either side."""
    for m in re.finditer(re.escape(needle), hay):
        before = hay[m.start() - 1] if m.start() else " "
        after = hay[m.end()] if m.end() < len(hay) else " "
        if not (before.isascii() and before.isalnum()) and not (after.isascii() and after.isalnum()):
            return True
    return False


def _article(text: str, end: int) -> bool:
    """The capital "A" ending at `end` reads as the English article (followed by an ordinary word)."""
    m = re.match(r"\s+([a-z]+)", text[end:])
    return bool(m) and m.group(1) not in _VERBS


def _leading(letter: str, text: str, end: int, own: str) -> bool:
    """Whether a letter at the start of `text` (ending at `end`) is the answer rather than a word."""
    rest = text[end:]
    if not rest.strip():
        return True
    if not rest[0].isspace():  # "B.", "B)", "B、", "B是…"; not "B1"
        return not (rest[0].isascii() and rest[0].isalnum())
    head = rest.lstrip()
    if not (head[0].isascii() and head[0].isalpha()):  # "B 北京", "B (Paris)"
        return True
    if own and _norm_text(head).startswith(_norm_text(own)):  # "B Paris" when B is Paris
        return True
    return not (letter == "A" and _article(text, end))  # "B is right", "A is right"; not "A cat sat"


def extract_choice(text: str, options: dict[str, str] | list[str] | None = None) -> tuple[str | None, str]:
    """(letter, rule) for a generation, or (None, "unparsed"); see the module docstring for the rules.

    `options` maps letters to option texts (a list means A, B, …); without options the letters A–D count
    and the text rules are skipped.
    """
    if isinstance(options, list):
        options = {LETTERS[i]: o for i, o in enumerate(options)}
    letters = "".join(sorted(options)) if options else "ABCD"
    t = unicodedata.normalize("NFKC", text)
    L = f"[{letters}{letters.lower()}]"
    word_end = r"(?![A-Za-z])"

    # 0. own
    if options:
        owns = {letter: unicodedata.normalize("NFKC", opt).strip() for letter, opt in options.items()}
        for letter, own in sorted(owns.items(), key=lambda kv: -len(kv[1])):  # longest as compared, normalised
            if own and re.match(rf"\s*{re.escape(own)}\s*[(\[【]\s*{letter}\s*[)\]】]", t):
                return letter, "own"

    # 1. marker
    marker = re.compile(
        r"(?:答案|正确选项)[\s:]*(?:应该|应|就)?[\s:]*(?:是|为|选|选择)?[\s:]*[(\[【]?\s*"
        rf"(?P<a>{L}){word_end}"
        rf"|(?:应该|应|故|所以|我|则)?选(?:择)?[\s:]*[(\[【]?\s*(?P<b>{L}){word_end}"
        rf"|\banswer\s*(?:is|:|=|would be|should be)?\s*(?:option|choice)?\s*[(\[]?\s*(?P<c>{L}){word_end}"
        rf"|\b(?:i\s+)?(?:choose|select|pick)\s+(?:option\s+)?[(\[]?\s*(?P<d>{L}){word_end}",
        re.I)
    for m in marker.finditer(t):
        key = next(k for k in "abcd" if m.group(k))
        letter = m.group(key)
        if letter.islower() and re.match(r"\s+[a-z]", t[m.end(key):]):
            continue  # "the answer is a cat": a lower-case article, not an option
        return letter.upper(), "marker"

    # 2. leading
    m = re.match(rf"\s*(?:[(\[【]\s*)?([{letters}]){word_end}", t)
    if m and _leading(m.group(1), t, m.end(), options.get(m.group(1), "") if options else ""):
        return m.group(1), "leading"

    # 3. mention
    mention = re.compile(rf"[(\[【]\s*(?P<a>[{letters}])\s*[)\]】]"
                         rf"|(?:选项|\b(?i:option|choice))\s*(?P<b>[{letters}]){word_end}"
                         rf"|(?<![A-Za-z])(?P<c>[{letters}])\s*(?:选项|项)")
    m = mention.search(t)
    if m:
        return m.group("a") or m.group("b") or m.group("c"), "mention"

    if options:
        # 4. text
        whole = _norm_text(t)
        for letter, opt in options.items():
            if whole and whole == _norm_text(opt):
                return letter, "text"
        # 5. contains
        found = {letter: _norm_text(opt) for letter, opt in options.items()
                 if _norm_text(opt) and _bounded(_norm_text(opt), whole)}
        if found:
            longest = max(found, key=lambda k: len(found[k]))
            if all(v in found[longest] for v in found.values()):
                return longest, "contains"

    # 6. letter
    for m in re.finditer(rf"(?<![A-Za-z])([{letters}]){word_end}", t):
        if m.group(1) == "A" and _article(t, m.end()):
            continue
        return m.group(1), "letter"
    return None, "unparsed"


# --- the task ------------------------------------------------------------------------------------

def grade_choice(prediction: str, gold: str, options: dict[str, str] | list[str] | None) -> dict[str, Any]:
    """Grade one generation against the gold letter (from the question's data, never parsed from text)."""
    pred, rule = extract_choice(prediction, options)
    return {"correct": pred == gold, "pred": pred, "gold": gold, "rule": rule}


def first_argmax(values: list[float]) -> int:
    """numpy.argmax's answer without numpy: the first index of the largest value, or the first NaN if any
    (lm-eval's acc and acc_norm take numpy.argmax of the log-likelihoods)."""
    best = 0
    for i, v in enumerate(values):
        if v != v:
            return i
        if v > values[best]:
            best = i
    return best


def summarize_choice(graded: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(graded)
    unparsed = sum(g["pred"] is None for g in graded)
    out = {"n": n, "accuracy": sum(bool(g["correct"]) for g in graded) / n if n else 0.0,
           "unparsed": unparsed, "unparsed_rate": unparsed / n if n else 0.0,
           "by_rule": {r: c for r in RULES + ("loglik",) if (c := sum(g["rule"] == r for g in graded))}}
    if graded and all("correct_norm" in g for g in graded):
        out["acc"] = out["accuracy"]
        out["acc_norm"] = sum(bool(g["correct_norm"]) for g in graded) / n
    return out


@register_task
class ChoiceTask(Task):
    """Multiple choice: generate-and-extract, or the log-likelihood of each option; both read the options
    and the answer from the Example's data (`choices`, `label`)."""

    name = "choice"
    primary_metric = "accuracy"
    right_or_wrong = True
    vote = "pred"
    default_format = "auto"  # question records, or alpaca records carrying `choices` and `answer`
    modes = ("generate", "loglik")
    settings = ("continuation",)
    continuation = "letter"

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        choice_continuations([], self.continuation)  # an unknown continuation fails before any model work
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        examples = read_examples(path, self.default_format)
        for ex in examples:
            _options(ex, path)
        return examples

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        out = grade_choice(prediction, LETTERS[_gold_index(example)], _options(example))
        return {**out, "kind": example.kind}

    def _continuations(self, example: Example) -> list[str]:
        conts = choice_continuations(list(_options(example).values()), self.continuation)
        empty = [LETTERS[i] for i, c in enumerate(conts) if not c]
        if empty:
            raise TunelabError(f"example '{example.id}': option {empty[0]} is empty, so continuation "
                               f"'{self.continuation}' has nothing to score (use letter or letter_text)",
                               field="continuation")
        return conts

    def loglik_requests(self, example: Example, prompt: str) -> list[tuple[str, str]]:
        return [(prompt, c) for c in self._continuations(example)]

    def grade_loglik(self, results: list, example: Example) -> dict[str, Any]:
        """lm-eval's acc and acc_norm (see the module docstring) for one question."""
        conts = self._continuations(example)
        gold = LETTERS[_gold_index(example)]
        letters = LETTERS[: len(conts)]
        lls = [r.logprob for r in results]
        pred = letters[first_argmax(lls)]
        pred_norm = letters[first_argmax([ll / float(len(c)) for ll, c in zip(lls, conts)])]
        return {"correct": pred == gold, "pred": pred, "gold": gold, "rule": "loglik",
                "correct_norm": pred_norm == gold, "pred_norm": pred_norm,
                "logprobs": dict(zip(letters, lls)), "greedy": [l for l, r in zip(letters, results) if r.is_greedy],
                "kind": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_choice(graded)


def _options(example: Example, path: str | Path | None = None) -> dict[str, str]:
    """The example's options by letter; an example without them (e.g. an alpaca record lacking `choices`)
    is an error: its prompt is not read back."""
    if len(example.choices) < 2 or example.label is None or not 0 <= example.label < len(example.choices):
        raise TunelabError(f"example '{example.id}' has no options: give question records, or alpaca records "
                           f"with 'choices' and 'answer'", file=path,
                           field="choices")
    return dict(zip(LETTERS, example.choices))


def _gold_index(example: Example) -> int:
    _options(example)
    return example.label  # type: ignore[return-value]  # checked by _options


# --- `tunelab grade choice` ----------------------------------------------------------------------

def _read_gold(path: Path) -> list[dict[str, Any]]:
    """Question records, or alpaca records carrying `choices` and `answer`; each {id, options, gold}."""
    gold = []
    for line, rec in iter_records(path):
        if not {"question", "choices", "A"} & rec.keys():
            raise TunelabError("no options: give question records, or alpaca records with 'choices' and "
                               "'answer'", file=path, line=line, field="choices")
        choices, label = choice_fields(rec, path, line)
        gold.append({"id": str(rec["id"]) if "id" in rec else None, "options": dict(zip(LETTERS, choices)),
                     "gold": LETTERS[label]})
    if not gold:
        raise TunelabError("no records", file=path)
    return gold


def grade_choice_files(pred: str | Path, gold: str | Path, ratio: float | None = None) -> dict[str, Any]:
    """`tunelab grade choice`: a prediction file against the questions, matched by id or by order; the summary of
    `summarize_choice`, with the stage-2 competition score when a low-parameter `ratio` is given."""
    from tunelab.metrics.prediction_files import match_predictions, read_prediction_file
    from tunelab.scoring import competition_score

    pred_path, gold_path = Path(pred), Path(gold)
    golds = _read_gold(gold_path)
    predictions = match_predictions(read_prediction_file(pred_path), golds, pred_path, gold_path)
    summary = summarize_choice([grade_choice(p, g["gold"], g["options"]) for p, g in zip(predictions, golds)])
    if ratio is not None:
        summary["ratio"] = ratio
        summary["stage2_score"] = competition_score("stage2", summary["accuracy"], ratio)
    return summary
