"""Multiple choice: read question files, build prompts, extract the chosen option from a generation, grade.

Input (JSON array or JSONL), one question per record:

* `{"question", "A", "B", "C", "D", "answer"}` — options under consecutive letter keys from "A" (2–26 of them);
* `{"question", "choices": [...], "answer"}`.

`answer` is a letter ("B", case-insensitive) or a 0-based index (1 or "1" = B). Optional `id` (default
"<file stem>-<index>") and `kind`. Errors name file, line and field.

Prompt (`choice_prompt`; the language is Chinese when the question or an option holds CJK text, else English,
or forced with lang="zh"/"en"), one option per line so graders can read the options back:

    以下是一道单项选择题，请选出正确答案，只回答选项字母。
    {question}
    A. {option A}
    B. {option B} ...

    The following is a multiple-choice question. Answer with the letter of the correct option.
    {question}
    A. {option A} ...

`to_training_records` turns questions into alpaca records {instruction, input: "", output} whose output is
the letter ("B") or, with answer_style="letter_text", "B. {option text}"; the `choice` task (default format
alpaca) grades those files directly, reading the options back from the instruction.

Extraction (`extract_choice`), after NFKC normalisation (full-width "Ｂ", "（", "：" read as ASCII). Only
letters of the question's options count; the first rule that finds one decides (the rule is reported):

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
scored as a continuation of the same prompt (`tunelab.eval.loglik`) and the highest total log-probability
wins — no extraction, nothing unparsed. The continuation (setting `continuation`) is the option letter
("B", default: what the prompt asks for and what `to_training_records` trains), the option text
("Paris"), or both ("B. Paris"). `accuracy` (= lm-eval's `acc`, also reported as `acc`) picks the argmax
of the summed log-probabilities; `acc_norm` the argmax of the log-probability divided by the
continuation's length in characters (lm-eval's acc_norm; with single-letter continuations it equals acc).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tunelab.data.examples import Example
from tunelab.data.records import iter_records, require_str
from tunelab.errors import TunelabError
from tunelab.tasks.registry import Task, register_task

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEADERS = {
    "zh": "以下是一道单项选择题，请选出正确答案，只回答选项字母。",
    "en": "The following is a multiple-choice question. Answer with the letter of the correct option.",
}
RULES = ("marker", "leading", "mention", "text", "contains", "letter")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A line of an option list: "A. text", "A、text", "A) text", "(A) text", "A: text".
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])\s*[.、:)])\s*(.*?)\s*$")
# Words after a sentence-initial "A" that make it the option letter rather than the article.
_VERBS = {"is", "was", "seems", "looks", "appears", "should", "would", "must", "can", "could", "will",
          "and", "or", "because", "since", "as"}


@dataclass
class ChoiceItem:
    id: str
    question: str
    options: list[str]
    answer: str  # the correct letter
    kind: str = ""


def detect_lang(question: str, options: Iterable[str]) -> str:
    return "zh" if _CJK.search(question) or any(_CJK.search(o) for o in options) else "en"


def choice_prompt(question: str, options: list[str], lang: str = "auto") -> str:
    """Header, question and one "X. option" line per option (see the module docstring)."""
    if lang == "auto":
        lang = detect_lang(question, options)
    if lang not in HEADERS:
        raise TunelabError(f"unknown language '{lang}' (choose from auto, zh, en)", field="lang")
    lines = [HEADERS[lang], question.strip()]
    lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def parse_options(text: str) -> dict[str, str]:
    """The last run of option lines "A. …", "B. …", … (from A, consecutive, at least two) in a prompt."""
    best: dict[str, str] = {}
    block: dict[str, str] = {}
    for line in unicodedata.normalize("NFKC", text).split("\n"):
        m = _OPTION_LINE.match(line)
        letter = (m.group(1) or m.group(2)) if m else None
        if letter and letter == LETTERS[len(block)]:
            block[letter] = m.group(3)
        elif letter == "A":
            block = {"A": m.group(3)}
        else:
            block = {}
        if len(block) >= 2:
            best = dict(block)
    return best


# --- reading question files ----------------------------------------------------------------------

def _answer_letter(rec: dict[str, Any], n: int, path: Path | str, line: int) -> str:
    if "answer" not in rec:
        raise TunelabError("missing field", file=path, line=line, field="answer")
    raw = rec["answer"]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise TunelabError(f"expected a letter or an index, got {type(raw).__name__}", file=path, line=line,
                           field="answer")
    text = unicodedata.normalize("NFKC", str(raw)).strip()
    if text.isdigit():
        index = int(text)
    elif len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    else:
        raise TunelabError(f"answer {raw!r} is neither an option letter nor a 0-based index", file=path,
                           line=line, field="answer")
    if index >= n:
        raise TunelabError(f"answer {raw!r} is out of range for {n} options (A–{LETTERS[n - 1]})", file=path,
                           line=line, field="answer")
    return LETTERS[index]


def parse_choice_record(rec: dict[str, Any], path: Path | str = "records", line: int = 1,
                        index: int = 0) -> ChoiceItem:
    """One question record (either shape) as a ChoiceItem."""
    question = require_str(rec, "question", path, line)
    if "choices" in rec:
        choices = rec["choices"]
        if not isinstance(choices, list) or not all(
                isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
            raise TunelabError("expected a list of strings", file=path, line=line, field="choices")
        options = [str(c) for c in choices]
    else:
        if "A" not in rec:
            raise TunelabError("no options: give 'choices' or option fields 'A', 'B', …", file=path, line=line,
                               field="choices")
        options = []
        for letter in LETTERS:
            if letter not in rec:
                break
            options.append(require_str(rec, letter, path, line))
    if len(options) < 2:
        raise TunelabError(f"a question needs at least 2 options, found {len(options)}", file=path, line=line,
                           field="choices" if "choices" in rec else "B")
    if len(options) > len(LETTERS):
        raise TunelabError(f"at most {len(LETTERS)} options are supported", file=path, line=line,
                           field="choices")
    ident = require_str(rec, "id", path, line) if "id" in rec else f"{Path(str(path)).stem}-{index}"
    kind = require_str(rec, "kind", path, line) if "kind" in rec else ""
    return ChoiceItem(ident, question, options, _answer_letter(rec, len(options), path, line), kind)


def read_choice(path: str | Path) -> list[ChoiceItem]:
    """Every question of a JSON/JSONL question file."""
    items = [parse_choice_record(rec, path, line, i) for i, (line, rec) in enumerate(iter_records(path))]
    if not items:
        raise TunelabError("no records", file=path)
    return items


def _items(records: Iterable[ChoiceItem | dict[str, Any]]) -> list[ChoiceItem]:
    return [r if isinstance(r, ChoiceItem) else parse_choice_record(r, "records", i + 1, i)
            for i, r in enumerate(records)]


def choice_examples(records: Iterable[ChoiceItem | dict[str, Any]], lang: str = "auto") -> list[Example]:
    """Examples whose instruction is the prompt and whose output is the correct letter."""
    out = []
    for item in _items(records):
        item_lang = detect_lang(item.question, item.options) if lang == "auto" else lang
        out.append(Example(id=item.id, instruction=choice_prompt(item.question, item.options, item_lang),
                           output=item.answer, kind=item.kind or f"choice-{item_lang}"))
    return out


def to_training_records(records: Iterable[ChoiceItem | dict[str, Any]], lang: str = "auto",
                        answer_style: str = "letter") -> list[dict[str, str]]:
    """Alpaca records {instruction, input, output} for LoRA training on questions (items or raw records).

    answer_style "letter" writes "B"; "letter_text" writes "B. {option B}".
    """
    if answer_style not in ("letter", "letter_text"):
        raise TunelabError(f"unknown answer style '{answer_style}' (choose from letter, letter_text)",
                           field="answer_style")
    items = _items(records)
    out = []
    for item, ex in zip(items, choice_examples(items, lang)):
        answer = item.answer
        if answer_style == "letter_text":
            answer = f"{answer}. {item.options[LETTERS.index(answer)].strip()}"
        out.append({"instruction": ex.instruction, "input": "", "output": answer})
    return out


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
    """Grade one generation against a gold letter (or gold text such as "B. Paris")."""
    gold_letter, _ = extract_choice(gold, options)
    if gold_letter is None:
        raise TunelabError(f"the gold answer {gold!r} names no option letter", field="output")
    pred, rule = extract_choice(prediction, options)
    return {"correct": pred == gold_letter, "pred": pred, "gold": gold_letter, "rule": rule}


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


CONTINUATIONS = ("letter", "text", "letter_text")


@register_task
class ChoiceTask(Task):
    """Multiple choice: generate-and-extract (options read back from the prompt's option lines), or the
    log-likelihood of each option."""

    name = "choice"
    primary_metric = "accuracy"
    default_format = "alpaca"
    modes = ("generate", "loglik")
    settings = ("continuation",)
    continuation = "letter"

    def configure(self, **values: Any) -> "Task":
        super().configure(**values)
        if self.continuation not in CONTINUATIONS:  # before any model work
            raise TunelabError(f"unknown continuation '{self.continuation}' (choose from "
                               f"{', '.join(CONTINUATIONS)})", field="continuation")
        return self

    def load_examples(self, path: str | Path) -> list[Example]:
        return choice_examples(read_choice(path))

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        out = grade_choice(prediction, example.output, parse_options(example.instruction) or None)
        return {**out, "kind": example.kind}

    def _options(self, example: Example) -> dict[str, str]:
        options = parse_options(example.instruction)
        if not options:
            raise TunelabError(f"example '{example.id}': no option lines (A. …, B. …) in the prompt",
                               field="instruction")
        return options

    def _continuations(self, options: dict[str, str]) -> list[str]:
        if self.continuation == "letter":
            return list(options)
        if self.continuation == "text":
            return [text.strip() for text in options.values()]
        return [f"{letter}. {text.strip()}" for letter, text in options.items()]

    def loglik_requests(self, example: Example, prompt: str) -> list[tuple[str, str]]:
        return [(prompt, c) for c in self._continuations(self._options(example))]

    def grade_loglik(self, results: list, example: Example) -> dict[str, Any]:
        options = self._options(example)
        gold, _ = extract_choice(example.output, options)
        if gold is None:
            raise TunelabError(f"the gold answer {example.output!r} names no option letter "
                               f"(example '{example.id}')", field="output")
        letters = list(options)
        conts = self._continuations(options)
        lls = [r.logprob for r in results]
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, conts)]
        pred = letters[max(range(len(lls)), key=lls.__getitem__)]
        pred_norm = letters[max(range(len(norm)), key=norm.__getitem__)]
        return {"correct": pred == gold, "pred": pred, "gold": gold, "rule": "loglik",
                "correct_norm": pred_norm == gold, "pred_norm": pred_norm,
                "logprobs": dict(zip(letters, lls)), "greedy": [l for l, r in zip(letters, results) if r.is_greedy],
                "kind": example.kind}

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_choice(graded)


# --- `tunelab grade choice` ----------------------------------------------------------------------

def _read_gold(path: Path) -> list[dict[str, Any]]:
    """Question records, or alpaca records (options read from the instruction); each {id, options, gold}."""
    gold = []
    for i, (line, rec) in enumerate(iter_records(path)):
        if "question" in rec:
            item = parse_choice_record(rec, path, line, i)
            gold.append({"id": str(rec["id"]) if "id" in rec else None,
                         "options": dict(zip(LETTERS, item.options)), "gold": item.answer})
        else:
            instruction = require_str(rec, "instruction", path, line)
            options = parse_options(instruction) or None
            letter, _ = extract_choice(require_str(rec, "output", path, line), options)
            if letter is None:
                raise TunelabError("the output names no option letter", file=path, line=line, field="output")
            gold.append({"id": str(rec["id"]) if "id" in rec else None, "options": options, "gold": letter})
    return gold


def cli_grade(args) -> int:
    """`tunelab grade choice --pred FILE --gold FILE [--ratio R] [--json]`."""
    from tunelab.scoring import competition_score
    from tunelab.eval.prediction_files import match_predictions, read_prediction_file

    pred_path, gold_path = Path(args.pred), Path(args.gold)
    gold = _read_gold(gold_path)
    predictions = match_predictions(read_prediction_file(pred_path), gold, pred_path, gold_path)
    graded = [grade_choice(p, g["gold"], g["options"]) for p, g in zip(predictions, gold)]
    summary = summarize_choice(graded)
    if args.ratio is not None:
        summary["ratio"] = args.ratio
        summary["stage2_score"] = competition_score("stage2", summary["accuracy"], args.ratio)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"choice: {summary['n']} questions, {pred_path} against {gold_path}")
    print(f"  accuracy   {summary['accuracy']:8.2%}")
    print(f"  unparsed   {summary['unparsed']:>5} ({summary['unparsed_rate']:.2%})")
    print("  rules      " + ", ".join(f"{r} {c}" for r, c in summary["by_rule"].items()))
    if args.ratio is not None:
        print(f"  stage2     {summary['stage2_score']:.6f}  = (1 - 10 * {args.ratio:g}) * 0.3 + accuracy * 0.7")
    return 0
