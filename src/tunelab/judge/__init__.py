"""`tunelab judge`: is model A's answer better than model B's, prompt by prompt, without a new round of human votes.

The answers are two JSONL files, each one answer a prompt: `tunelab generate MODEL --file prompts.jsonl --json`
writes them (`prompt` and `text`), and any file with `prompt` and `answer` or `text` will do. They are matched by
prompt; a prompt only one file answers is reported, not judged. The judge is:
- **programmatic** (`.programmatic`), when the data has known answers: the right answer wins (exact or numeric
  match against the reference), so a CPU run needs no large model;
- **a model** (`.endpoint`) behind any OpenAI-compatible URL, asked in both orders so its position bias
  cancels (`.verdicts`), with the reference answer in its prompt when there is one.
References come from the prompts file (`reference`, `answer`, `solution` or `output`), matched by prompt too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.judge.verdicts import A, B, TIE, Tally, combine
from tunelab.records import iter_records

log = logging.getLogger(__name__)

_ANSWER_KEYS = ("text", "answer", "output", "response")
_REFERENCE_KEYS = ("reference", "answer", "solution", "output")


@dataclass
class Judged:
    """One prompt's judgment: the two answers, the reference, each order's verdict in A/B terms, the verdict."""

    prompt: str
    answer_a: str
    answer_b: str
    reference: str | None
    orders: tuple[str | None, str | None]
    verdict: str

    def record(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer_a": self.answer_a, "answer_b": self.answer_b,
                "reference": self.reference, "a_first": self.orders[0], "b_first": self.orders[1],
                "verdict": self.verdict}


def _field(rec: dict, keys: tuple[str, ...], path: Path, line: int, what: str) -> str:
    for key in keys:
        if isinstance(rec.get(key), str):
            return rec[key]
    raise TunelabError(f"no {what} ({' or '.join(keys)}, a text)", file=path, line=line, field=keys[0])


def read_answers(path: str | Path, sample: int = 1) -> dict[str, str]:
    """{prompt: its answer} of an answers file: sample `sample` of each prompt of a `tunelab generate -n N --json`
    file (a file without sample numbers: each prompt's first answer). A failed generation (`error` set) is no
    answer. Two samples of one model, judged against each other, are how its own answers become preference
    pairs (`--sample-b 2`, then `tunelab data prefs` on the judgments)."""
    path = Path(path)
    out: dict[str, str] = {}
    for line, rec in iter_records(path):
        prompt = _field(rec, ("prompt",), path, line, "prompt")
        if rec.get("error") or rec.get("sample", sample) != sample:
            continue
        out.setdefault(prompt, _field(rec, _ANSWER_KEYS, path, line, "answer"))
    return out


def read_references(path: str | Path) -> dict[str, str]:
    path = Path(path)
    return {_field(rec, ("prompt", "question", "instruction", "problem"), path, line, "prompt"):
            _field(rec, _REFERENCE_KEYS, path, line, "reference") for line, rec in iter_records(path)}


def judge_answers(answers_a: dict[str, str], answers_b: dict[str, str], references: dict[str, str] | None = None,
                  endpoint=None, match: str = "numeric") -> tuple[Tally, list[Judged], int]:
    """(the tally, each prompt's judgment, how many prompts only one side answered). With no `endpoint` the
    programmatic judge decides, and every prompt needs a reference."""
    from tqdm.auto import tqdm

    from tunelab.judge.programmatic import is_right, judge_by_reference
    shared = [p for p in answers_a if p in answers_b]
    unmatched = len(set(answers_a) ^ set(answers_b))
    if not shared:
        raise TunelabError("the two answer files share no prompt", field="answers")
    if endpoint is None:
        missing = [p for p in shared if not references or p not in references]
        if missing:
            raise TunelabError(f"the programmatic judge needs each prompt's reference answer; {len(missing)} of "
                               f"{len(shared)} have none (first: {missing[0][:80]!r})", field="references")
    tally, judged = Tally(), []
    for prompt in tqdm(shared, desc="judge", unit="prompt", disable=len(shared) < 20):
        a, b = answers_a[prompt], answers_b[prompt]
        ref = (references or {}).get(prompt)
        if endpoint is None:
            verdict = judge_by_reference(a, b, ref, match)
            orders = (verdict, verdict)  # symmetric: the order cannot matter
            tally.right_a += is_right(a, ref, match)
            tally.right_b += is_right(b, ref, match)
        else:
            to_ab = {"first": A, "second": B, "tie": TIE}
            first = endpoint.ask(prompt, a, b, ref)   # A shown first
            second = endpoint.ask(prompt, b, a, ref)  # B shown first: "first" now means B
            orders = (to_ab.get(first) if first else None,
                      {"first": B, "second": A, "tie": TIE}.get(second) if second else None)
            verdict = combine(*orders)
        unjudged = None in orders
        tally.add(verdict, unjudged=unjudged, inconsistent=not unjudged and orders[0] != orders[1])
        judged.append(Judged(prompt, a, b, ref, orders, verdict))
    return tally, judged, unmatched


def write_to_arena(db: str | Path, judged: list[Judged], judge_name: str, model_a: str, model_b: str) -> int:
    """Each judgment as a vote of the judge `judge_name` in an arena database (A's win `left`, B's `right`, a
    tie `tie`), kept apart from people's votes there (`tunelab.serve.arena`). A judgment already written (the
    same judge, models, prompt and answers) is not written twice. Returns how many votes were added."""
    import hashlib

    from tunelab.serve.arena import ArenaStore
    if not judge_name.strip():
        raise TunelabError("a judge's votes need the judge's name", field="judge_name")
    if model_a == model_b:
        raise TunelabError("the two models need different names", field="model_b")
    votes = {A: "left", B: "right", TIE: "tie"}
    store = ArenaStore(db)
    added = 0
    try:
        for j in judged:
            key = "\0".join((judge_name, model_a, model_b, j.prompt, j.answer_a, j.answer_b))
            battle = "judge:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
            added += store.record(model_a, model_b, votes[j.verdict], j.prompt, j.answer_a, j.answer_b,
                                  anonymous=True, battle=battle, judge=judge_name) is not None
    finally:
        store.close()
    return added
