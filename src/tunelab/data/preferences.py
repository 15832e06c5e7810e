"""Preference pairs — a prompt, the answer people preferred and the one they did not — from the arena's votes
and from the public files preference tuning is usually given (`tunelab data prefs`).

What a pair is: `prompt` (a text, or the conversation before the answers as chat messages), `chosen` and
`rejected` (the two answers' texts), and where it came from (the two models, how many votes, the battle ids,
the time of the latest vote, or the source file's line).

Sources:
- **An arena database** (`tunelab ui`'s votes.db): `left`/`right` votes become pairs; `tie` and `both_bad`
  say nothing about which answer is better and are skipped (and counted). Only anonymous battles are used
  unless named ones are asked for: a voter who saw the model names was not judging the answers alone.
- **Files** (JSONL or a JSON array), in the shapes preference data comes in:
  - `{prompt, chosen, rejected}` as texts (TRL's "standard" explicit-prompt form);
  - `{prompt: [messages], chosen: [messages], rejected: [messages]}`, the answers one assistant message each
    (TRL's conversational explicit-prompt form);
  - `{chosen: [messages], rejected: [messages]}`, whole conversations that share the prompt turns
    (UltraFeedback-binarized; a `prompt` text beside them is the same first turn and is not needed);
  - `{chosen: "...", rejected: "..."}` in HH-RLHF's text form ("\\n\\nHuman: …\\n\\nAssistant: …"), read
    into chat messages so the model's own chat template applies when training;
  - `tunelab judge --out` judgments `{prompt, answer_a, answer_b, verdict}`: the preferred answer is chosen, a
    tie is skipped (and counted). Two samples of one model judged against each other (`tunelab judge S.jsonl
    S.jsonl --sample-b 2`) give on-policy pairs.
- **The grader's own verdicts** (`--from-samples`): the predictions file `tunelab eval --samples K` writes, each
  problem with its K sampled answers and whether each is right. A right and a wrong answer of the same problem
  are a pair (verified DPO: on-policy answers, judged by the task's grader rather than a person or a judge
  model); a problem whose samples are all right or all wrong teaches no preference and is skipped (counted).

Then: a pair whose answers are the same is dropped; the same pair seen several times is merged (its votes
added); a pair voted both ways keeps the majority's direction, and an even split is dropped; and the split
into train and validation is by prompt, so no prompt is in both (a prompt's pairs would otherwise teach the
validation answers).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.records import iter_records, lone_surrogate

ROLES = ("system", "user", "assistant")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class PreferencePair:
    prompt: str | list[dict[str, str]]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    def prompt_key(self) -> str:
        return json.dumps(self.prompt, ensure_ascii=False, sort_keys=True)

    def to_record(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.meta}


# --- the arena -------------------------------------------------------------------------------------------------

_ARENA_COLUMNS = {"id", "ts", "model_a", "model_b", "vote", "prompt", "answer_a", "answer_b", "anonymous"}


def arena_pairs(db: str | Path, named: bool = False) -> tuple[list[PreferencePair], Counter]:
    """The arena's left/right votes as pairs, and what was skipped (`tie`, `both_bad`, `named`, and `judge`: the
    verdicts `tunelab judge` wrote there, which are not people's preferences)."""
    path = Path(db)
    if not path.is_file():
        raise TunelabError("arena database not found", file=path)
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            columns = {r[1] for r in con.execute("PRAGMA table_info(votes)")}
            if not _ARENA_COLUMNS <= columns:
                raise TunelabError("not an arena database (no votes table with prompts and answers)", file=path)
            battle = "battle" if "battle" in columns else "NULL"
            judge = "judge" if "judge" in columns else "NULL"
            rows = con.execute(f"SELECT id, ts, model_a, model_b, vote, prompt, answer_a, answer_b, anonymous, "
                               f"{battle}, {judge} FROM votes ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise TunelabError(f"not a readable SQLite database ({e})", file=path) from e
    pairs, skipped = [], Counter()
    for vid, ts, model_a, model_b, vote, prompt, answer_a, answer_b, anonymous, battle_id, judge in rows:
        if judge is not None:  # a judge's verdict (`tunelab judge --arena`), not a person's preference
            skipped["judge"] += 1
            continue
        if not anonymous and not named:
            skipped["named"] += 1
            continue
        if vote not in ("left", "right"):
            skipped[vote] += 1
            continue
        won_a = vote == "left"
        pairs.append(PreferencePair(
            prompt, answer_a if won_a else answer_b, answer_b if won_a else answer_a,
            {"chosen_model": model_a if won_a else model_b, "rejected_model": model_b if won_a else model_a,
             "votes": 1, "vote_ids": [vid], "battles": [battle_id] if battle_id else [], "ts": ts,
             "source": "arena"}))
    return pairs, skipped


# --- files -----------------------------------------------------------------------------------------------------

def file_pairs(path: str | Path, skipped: Counter | None = None) -> list[PreferencePair]:
    """Every record of a preference file as a pair (module docstring's shapes); a bad record is an error naming
    its line and field. A judgment that is a tie (`tunelab judge --out`) is no pair: counted in `skipped` by why
    (`_tie_reason`)."""
    path = Path(path)
    pairs = []
    for line, rec in iter_records(path):
        if "verdict" in rec and "answer_a" in rec:
            pair = _judged_pair(rec, path, line)
            if pair is None:
                if skipped is not None:
                    skipped[_tie_reason(rec)] += 1
                continue
            pairs.append(pair)
        else:
            pairs.append(_record_pair(rec, path, line))
    return pairs


def sample_pairs(path: str | Path, per_problem: int = 1, skipped: Counter | None = None) -> list[PreferencePair]:
    """Pairs of a right and a wrong sampled answer of each problem in a predictions file of `tunelab eval
    --samples` (its rows' `samples` and `samples_correct`): up to `per_problem` a problem, each answer text in at
    most one pair while others are left, the right ones in the order sampled. A problem all right or all wrong is
    counted in `skipped`."""
    path = Path(path)
    pairs = []
    for line, rec in iter_records(path):
        texts, right = rec.get("samples"), rec.get("samples_correct")
        if not isinstance(texts, list) or not isinstance(right, list) or len(texts) != len(right):
            raise TunelabError("a row without its sampled answers and verdicts (`samples`, `samples_correct`): "
                               "write the file with tunelab eval --samples K", file=path, line=line, field="samples")
        problem = _text(rec.get("problem"), path, line, "problem")
        context = rec.get("input") or ""
        chosen = list(dict.fromkeys(t for t, ok in zip(texts, right) if ok and isinstance(t, str) and t.strip()))
        rejected = list(dict.fromkeys(t for t, ok in zip(texts, right) if not ok and isinstance(t, str)))
        if not chosen or not rejected:
            if skipped is not None:
                skipped["all samples right" if chosen else "no sample right"] += 1
            continue
        prompt = f"{problem}\n{context}" if context else problem
        meta = {"source": f"{path}:{line}", "problem_id": rec.get("id"), "pass_rate": sum(map(bool, right)) / len(right)}
        # every (right, wrong) combination once, diagonal by diagonal: the first pairs use each text once
        order = [(c, (c + d) % len(rejected)) for d in range(len(rejected)) for c in range(len(chosen))]
        pairs += [PreferencePair(prompt, chosen[c], rejected[r], dict(meta)) for c, r in order[:per_problem]]
    return pairs


def _tie_reason(rec: dict[str, Any]) -> str:
    """Why a judgment is a tie, from its two orders' verdicts (`tunelab.judge.Judged.record`): the judge named no
    verdict in an order (a mute or refusing judge: thousands of these mean the judge is broken, not the answers
    alike), its two orders disagreed (position bias), or it found the answers equally good."""
    orders = rec.get("a_first"), rec.get("b_first")
    if ("a_first" in rec or "b_first" in rec) and None in orders:
        return "judge gave no verdict"
    if orders[0] != orders[1]:
        return "judge's two orders disagreed"
    return "judged tie"


def _judged_pair(rec: dict[str, Any], path: Path, line: int) -> PreferencePair | None:
    """A `tunelab judge --out` record: the answer the judge preferred is chosen; a tie is None."""
    verdict = rec["verdict"]
    if verdict not in ("A", "B", "tie"):
        raise TunelabError(f"expected a verdict A, B or tie, got {verdict!r}", file=path, line=line, field="verdict")
    if verdict == "tie":
        return None
    prompt = _text(rec.get("prompt"), path, line, "prompt")
    a, b = _text(rec["answer_a"], path, line, "answer_a"), _text(rec.get("answer_b"), path, line, "answer_b")
    chosen, rejected = (a, b) if verdict == "A" else (b, a)
    return PreferencePair(prompt, chosen, rejected, {"source": f"{path.name}:{line}", "judged": True})


def _text(value: Any, path: Path, line: int, name: str) -> str:
    if not isinstance(value, str):
        raise TunelabError(f"expected a text or a list of chat messages, got {type(value).__name__}", file=path,
                           line=line, field=name)
    if (at := lone_surrogate(value)) is not None:
        raise TunelabError(f"not valid Unicode text (a lone surrogate at character {at})", file=path, line=line,
                           field=name)
    return value


def _messages(value: Any, path: Path, line: int, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TunelabError("expected a non-empty list of chat messages", file=path, line=line, field=name)
    out = []
    for i, m in enumerate(value):
        where = f"{name}.{i}"
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            raise TunelabError("expected a message {role, content}", file=path, line=line, field=where)
        if m["role"] not in ROLES:
            raise TunelabError(f"unknown role {m['role']!r} (known: {', '.join(ROLES)})", file=path, line=line,
                               field=f"{where}.role")
        out.append({"role": m["role"], "content": _text(m["content"], path, line, f"{where}.content")})
    return out


def _answer(messages: list[dict[str, str]], path: Path, line: int, name: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise TunelabError("expected the answer as one assistant message", file=path, line=line, field=name)
    return messages[0]["content"]


def _record_pair(rec: dict[str, Any], path: Path, line: int) -> PreferencePair:
    for name in ("chosen", "rejected"):
        if name not in rec:
            raise TunelabError("missing field", file=path, line=line, field=name)
    chosen, rejected = rec["chosen"], rec["rejected"]
    meta = {"source": f"{path.name}:{line}"}
    if isinstance(chosen, list) or isinstance(rejected, list):
        c, r = _messages(chosen, path, line, "chosen"), _messages(rejected, path, line, "rejected")
        if isinstance(rec.get("prompt"), list):  # explicit prompt: the answers alone
            prompt = _messages(rec["prompt"], path, line, "prompt")
            return PreferencePair(prompt, _answer(c, path, line, "chosen"), _answer(r, path, line, "rejected"), meta)
        shared = 0  # implicit prompt: the turns both conversations share
        while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
            shared += 1
        if shared == 0 or c[:shared] != r[:shared]:
            raise TunelabError("chosen and rejected share no prompt turns (give a prompt field)", file=path,
                               line=line, field="chosen")
        return PreferencePair(c[:shared], _answer(c[shared:], path, line, "chosen"),
                              _answer(r[shared:], path, line, "rejected"), meta)
    c, r = _text(chosen, path, line, "chosen"), _text(rejected, path, line, "rejected")
    if "prompt" in rec:
        return PreferencePair(_text(rec["prompt"], path, line, "prompt"), c, r, meta)
    prompt_c, answer_c = _hh_split(c)
    prompt_r, answer_r = _hh_split(r)
    if prompt_c is None or prompt_c != prompt_r:
        raise TunelabError("no prompt: give a prompt field, chosen/rejected as chat messages, or HH-RLHF text "
                           "('\\n\\nHuman: …\\n\\nAssistant: …') whose turns before the last answer agree",
                           file=path, line=line, field="prompt")
    return PreferencePair(prompt_c, answer_c, answer_r, meta)


def _hh_split(text: str) -> tuple[list[dict[str, str]] | None, str]:
    """HH-RLHF text as (the chat messages before the last assistant turn, that turn's text); (None, "") when the
    text is not in that form (it must start with a Human turn and end with an Assistant one)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 5 or parts[0].strip() or len(parts) % 2 == 0:
        return None, ""
    turns = [("user" if who == "Human" else "assistant", body) for who, body in zip(parts[1::2], parts[2::2])]
    if turns[0][0] != "user" or turns[-1][0] != "assistant":
        return None, ""
    return [{"role": role, "content": body} for role, body in turns[:-1]], turns[-1][1]


# --- merging and splitting -------------------------------------------------------------------------------------

def merge_pairs(pairs: list[PreferencePair]) -> tuple[list[PreferencePair], Counter]:
    """One pair per (prompt, answer, answer): repeats merged (votes added), a pair voted both ways kept in the
    majority's direction (`against`: the votes the other way) and dropped on an even split; a pair whose two
    answers are the same says nothing and is dropped."""
    dropped: Counter = Counter()
    groups: dict[tuple, dict[bool, list[PreferencePair]]] = {}
    for p in pairs:
        if p.chosen == p.rejected:
            dropped["same answers"] += 1
            continue
        forward = p.chosen < p.rejected
        key = (p.prompt_key(), *sorted((p.chosen, p.rejected)))
        groups.setdefault(key, {True: [], False: []})[forward].append(p)
    out = []
    for sides in groups.values():
        ahead, behind = sides[True], sides[False]
        votes = lambda ps: sum(p.meta.get("votes", 1) for p in ps)  # noqa: E731
        if votes(ahead) == votes(behind):
            dropped["voted both ways evenly"] += len(ahead) + len(behind)
            continue
        if votes(behind) > votes(ahead):
            ahead, behind = behind, ahead
        first = ahead[0]
        merged = dict(first.meta)
        if len(ahead) > 1 or behind:
            dropped["merged repeats"] += len(ahead) - 1
            merged["votes"] = votes(ahead)
            for key in ("vote_ids", "battles"):
                if key in merged:
                    merged[key] = [v for p in ahead for v in p.meta.get(key, [])]
            if "ts" in merged:
                merged["ts"] = max(p.meta["ts"] for p in ahead)
        if behind:
            merged["against"] = votes(behind)
            dropped["outvoted"] += len(behind)
        out.append(PreferencePair(first.prompt, first.chosen, first.rejected, merged))
    return out, dropped


def split_by_prompt(pairs: list[PreferencePair], val_fraction: float, seed: int = 0
                    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, val): each prompt goes wholly to one side, by a hash of the prompt and `seed` (stable as data is
    added). With a fraction above 0 and two prompts or more, at least one prompt is held out."""
    if not 0 <= val_fraction < 1:
        raise TunelabError(f"the validation fraction is in [0, 1), got {val_fraction}", field="val_fraction")

    def draw(key: str) -> float:
        digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64
    keys = {p.prompt_key() for p in pairs}
    held = {k for k in keys if draw(k) < val_fraction}
    if val_fraction > 0 and not held and len(keys) >= 2:
        held = {min(keys, key=draw)}
    return [p for p in pairs if p.prompt_key() not in held], [p for p in pairs if p.prompt_key() in held]


def build_preferences(out: str | Path, arena: str | Path | None = None, files: list[str | Path] | None = None,
                      val_fraction: float = 0.1, seed: int = 0, named: bool = False,
                      samples: list[str | Path] | None = None, per_problem: int = 1) -> dict[str, Any]:
    """Write OUT/train.jsonl, OUT/val.jsonl and OUT/summary.json from an arena database, preference files and/or
    sampled answers with the grader's verdicts (`sample_pairs`, up to `per_problem` pairs a problem); returns the
    summary. Its counts add up: `read` (votes and file records) = `pairs` written + `left_out`, which
    is the sum of `skipped` (records that are no pair: ties, named battles, a judge's votes, each by its reason)
    and `dropped` (pairs removed by `merge_pairs`: same answers, repeats merged into one, outvoted, even splits);
    a sampled problem counts once for each pair it gave, or once as left out. `sampled_problems`: the problems of
    the sample files."""
    from tunelab.records import building_dir, write_json, write_jsonl
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError("the output directory exists: give a new one", file=out, field="out")
    if arena is None and not files and not samples:
        raise TunelabError("nothing to read: give an arena database, preference files or sampled answers",
                           field="sources")
    pairs: list[PreferencePair] = []
    skipped: Counter = Counter()
    if arena is not None:
        found, skipped = arena_pairs(arena, named)
        pairs += found
    for f in files or []:
        pairs += file_pairs(f, skipped)
    problems = 0
    for f in samples or []:
        left_out = sum(skipped.values())
        found = sample_pairs(f, per_problem, skipped)
        pairs += found  # a problem gave pairs (each names its line) or was left out: counted without a second read
        problems += len({p.meta["source"] for p in found}) + sum(skipped.values()) - left_out
    read = len(pairs) + sum(skipped.values())
    merged, dropped = merge_pairs(pairs)
    if not merged:
        raise TunelabError(f"no preference pair to write ({read} records read; left out: "
                           f"{dict(skipped + dropped) or 'none'})", file=arena or (files or samples)[0])
    train, val = split_by_prompt(merged, val_fraction, seed)
    summary = {"read": read, "left_out": read - len(merged), "skipped": dict(skipped), "dropped": dict(dropped),
               "pairs": len(merged),
               "train": len(train), "val": len(val),
               "train_prompts": len({p.prompt_key() for p in train}),
               "val_prompts": len({p.prompt_key() for p in val}),
               "val_fraction": val_fraction, "seed": seed, **({"sampled_problems": problems} if samples else {})}
    with building_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", (p.to_record() for p in train))
        write_jsonl(tmp / "val.jsonl", (p.to_record() for p in val))
        write_json(tmp / "summary.json", summary)
    return summary


def pair_examples(pairs: list[PreferencePair]) -> list[tuple[Example, Example]]:
    """Each pair as the two SFT examples it is made of (same instruction, the chosen and the rejected answer), so
    that it is templated and tokenised exactly as fine-tuning does (`tunelab.data.packing.encode_examples`: the
    prompt and the answer apart, the label boundary exact, EOS after the answer). A prompt given as chat messages
    of more than one user turn stays a conversation (`Example.messages`), the answer its last assistant turn:
    the model's own chat template renders every turn; tunelab's templates show the user and assistant turns.
    The pair's rows train the last turn only (`preference_rows`)."""
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p.prompt, str):
            instruction, turns = p.prompt, None
        else:
            users = [m["content"] for m in p.prompt if m["role"] == "user"]
            if not users:
                raise TunelabError("the prompt has no user message", file=p.meta.get("source"), field="prompt")
            instruction = users[-1]
            turns = [dict(m) for m in p.prompt] if [m["role"] for m in p.prompt] != ["user"] else None
        out.append(tuple(Example(f"pair-{i}-{side}", instruction, answer, messages=turns and [
            *turns, {"role": "assistant", "content": answer}]) for side, answer in (("chosen", p.chosen),
                                                                                 ("rejected", p.rejected))))
    return out


def source_pairs(path: str | Path, count: int | None = None, seed: int = 0) -> list[PreferencePair]:
    """A recipe's preference source: its file's pairs, `count` of them drawn with `seed` when given."""
    import random
    pairs = file_pairs(path)
    if count is not None and count < len(pairs):
        pairs = random.Random(seed).sample(pairs, count)
    return pairs
