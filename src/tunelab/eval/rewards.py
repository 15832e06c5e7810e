"""Rewards for GRPO: what a sampled completion scores, from the tasks' own graders and a few shaping terms.

A reward is a list of terms, each with a weight (`weight:`, default 1) and a name (`name:`, default below):
- `{task: NAME}`: the task's grader, the same `Task.grade` evaluation uses (arithmetic's final number, choice's
  extracted option, cola/qqp's label parser, reading/squad's exact match, rougel's full match, …): 1.0 when it
  marks the completion `correct`, else 0.0. `field:` takes another number the grader gives instead (squad's
  `f1`, rougel's `rougeL_f`, arithmetic's `digit_acc`: as the grader gives it, not rescaled), `options:`
  configures the task as an evaluation's task options do. Every registered task with a `generate` mode is
  one; it needs each completion's Example. Named after the task.
- `{format: REGEX}`: 1.0 when the completion matches the regular expression (`re.search` with DOTALL: anchor
  it with ^ and \\Z), else 0.0. Named `format`.
- `{length: {max_tokens: L, cache: C}}`: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to
  L − C tokens, falling linearly to −1 at L, −1 beyond; a penalty, never a bonus (TRL 1.16's
  `trl.rewards.get_soft_overlong_punishment`, checked against it). Needs the completions' token ids. Named
  `length`.
- `{function: "module:name"}`, or `{function: "file.py:name"}` with a file relative to the recipe's folder: a
  function of the user's, named after it, called once per batch as

      name(prompts: list[str], completions: list[str], **columns) -> list[float]

  `prompts[i]` is the rendered prompt completion i answers (a prompt's completions repeat it), `completions[i]`
  the decoded completion; `columns` are `completion_ids` (list[list[int]], when the caller has them) and the
  examples' fields, one value per completion: `id`, `instruction`, `input`, `output`, `kind`, `answers`,
  `choices`, `label`. Take `**kwargs` so that columns added later do not break it. This is TRL's reward-function
  convention (`GRPOTrainer._calculate_rewards` passes a dataset's columns the same way), so a TRL reward
  function that needs only these columns works unchanged.

A term that raises, returns anything but one finite number per completion (a wrong count, a NaN, an infinity,
None, a string) is ONE `TunelabError` naming the term and the prompt and completion that caused it; a function
that raises on the batch is called again one completion at a time to find which one. TRL's None ("this reward
does not apply") is refused on purpose: every term scores every completion. The built-in graders are written
never to fail on what a model can write (empty, huge, Chinese, garbage numbers: 0 reward); a task's error about
its own data (a reference that is not a number) is reported as that, with the example's id.

This module lives in `eval` (rank 5), above `tasks`: `train` (rank 3) may not import the graders, so the loop
gets rewards as numbers (`Rewards.score` → (completions, terms), then `tunelab.train.methods.grpo_loss.group_advantages`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.data.examples import Example
from tunelab.errors import TunelabError

KINDS = ("task", "format", "length", "function")
COMMON = ("weight", "name")
OPTIONAL = {"task": ("field", "options"), "format": (), "length": (), "function": ()}
COLUMNS = tuple(f.name for f in dataclasses.fields(Example))


@dataclass
class Completions:
    """One batch to score: parallel lists, one entry per completion (a prompt's completions repeat it)."""

    prompts: list[str]
    completions: list[str]
    examples: list[Example] | None = None
    completion_ids: list[list[int]] | None = None

    def one(self, i: int) -> "Completions":
        return Completions([self.prompts[i]], [self.completions[i]],
                           None if self.examples is None else [self.examples[i]],
                           None if self.completion_ids is None else [self.completion_ids[i]])


@dataclass(frozen=True)
class RewardTerm:
    """`score(batch)` gives one raw value per completion; `field` is where the term was configured (errors);
    `needs` the batch's optional lists it reads (`examples`, `completion_ids`)."""

    name: str
    weight: float
    score: Callable[[Completions], Any]
    field: str
    needs: tuple[str, ...] = ()


def _clip(text: str, limit: int = 60) -> str:
    shown = repr(text[:limit]) + (f"… ({len(text)} characters)" if len(text) > limit else "")
    return shown


def _where(batch: Completions, i: int) -> str:
    return f"prompt {_clip(batch.prompts[i])}, completion {_clip(batch.completions[i])}"


class Rewards:
    """The terms of a reward, in order. `score` gives each completion's value under each term, (completions,
    terms), as the rows `tunelab.train.methods.grpo_loss.group_advantages` reads (reshaped to (prompts, G, terms)) with
    `weights`; `total` the weighted sum per completion."""

    def __init__(self, terms: list[RewardTerm]):
        if not terms:
            raise TunelabError("a reward needs at least one term (task, format, length or function)",
                               field="rewards")
        self.terms = terms

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def weights(self) -> list[float]:
        return [t.weight for t in self.terms]

    def score(self, prompts: list[str], completions: list[str], examples: list[Example] | None = None,
              completion_ids: list[list[int]] | None = None) -> list[list[float]]:
        batch = Completions(list(prompts), list(completions), examples, completion_ids)
        n = len(batch.completions)
        for name, values in (("prompts", batch.prompts), ("examples", examples), ("completion_ids", completion_ids)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} completions")
        for term in self.terms:
            for need in term.needs:
                if getattr(batch, need) is None:
                    raise ValueError(f"the '{term.name}' reward needs the completions' {need}")
        columns = [_checked(term, _call(term, batch), batch) for term in self.terms]
        return [list(row) for row in zip(*columns)] if n else []

    def total(self, scores: list[list[float]]) -> list[float]:
        return [sum(w * v for w, v in zip(self.weights, row)) for row in scores]


def _call(term: RewardTerm, batch: Completions):
    try:
        return term.score(batch)
    except TunelabError as e:  # a task's complaint about its own data: say which term and example
        raise TunelabError(f"reward '{term.name}': {e.message}", file=e.file, line=e.line,
                           field=e.field or term.field) from e
    except Exception as e:  # noqa: BLE001 — a user's function may raise anything: one located error
        culprit = None
        if len(batch.completions) > 1:
            for i in range(len(batch.completions)):
                try:
                    term.score(batch.one(i))
                except Exception:  # noqa: BLE001
                    culprit = i
                    break
        where = f" on {_where(batch, culprit)}" if culprit is not None else \
            f" on a batch of {len(batch.completions)} completions (each alone passes)" if len(batch.completions) > 1 \
            else f" on {_where(batch, 0)}" if batch.completions else ""
        raise TunelabError(f"reward '{term.name}' raised {type(e).__name__}: {e}{where}", field=term.field) from e


def _checked(term: RewardTerm, values, batch: Completions) -> list[float]:
    n = len(batch.completions)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise TunelabError(f"reward '{term.name}' returned {type(values).__name__}, not a list of {n} numbers",
                           field=term.field)
    values = list(values)
    if len(values) != n:
        raise TunelabError(f"reward '{term.name}' returned {len(values)} values for {n} completions (one number "
                           f"per completion, in order)", field=term.field)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, numbers.Real):
            raise TunelabError(f"reward '{term.name}' returned {_clip(repr(v), 40)} ({type(v).__name__}), not a "
                               f"number, for {_where(batch, i)}", field=term.field)
        v = float(v)
        if not math.isfinite(v):
            raise TunelabError(f"reward '{term.name}' returned {v} for {_where(batch, i)}", field=term.field)
        out.append(v)
    return out


# --- the terms ------------------------------------------------------------------------------------

def task_term(name: str, field: str = "correct", options: dict | None = None, *, weight: float = 1.0,
              where: str = "rewards.0") -> RewardTerm:
    """The task's grader as a reward: `field` of what `Task.grade` returns (True → 1.0, False → 0.0)."""
    from tunelab.tasks.registry import get_task
    try:
        task = get_task(name)
    except TunelabError as e:
        raise TunelabError(e.message, field=f"{where}.task") from e
    try:
        task.configure(**(options or {}))
    except TunelabError as e:
        setting = f".{e.field}" if e.field and e.field != "options" else ""
        raise TunelabError(e.message, field=f"{where}.options{setting}") from e
    if "generate" not in task.modes:
        raise TunelabError(f"task '{name}' grades no generated text (its modes: {', '.join(task.modes)}), so it "
                           f"cannot be a reward", field=f"{where}.task")

    def score(batch: Completions) -> list[float]:
        out = []
        for completion, example in zip(batch.completions, batch.examples):
            try:
                graded = task.grade(completion, example)
            except TunelabError as e:
                raise TunelabError(f"example '{example.id}': {e.message}", file=e.file, line=e.line,
                                   field=e.field) from e
            if field not in graded:
                raise TunelabError(f"task '{name}' grades no '{field}' (it gives: "
                                   f"{', '.join(k for k, v in graded.items() if isinstance(v, (bool, int, float)))})",
                                   field=f"{where}.field")
            value = graded[field]
            out.append(float(value) if isinstance(value, bool) else value)
        return out

    return RewardTerm(name, weight, score, f"{where}.task", needs=("examples",))


def format_term(pattern: str, *, weight: float = 1.0, where: str = "rewards.0") -> RewardTerm:
    """1.0 when `re.search(pattern, completion, re.DOTALL)` matches, else 0.0."""
    try:
        regex = re.compile(pattern, re.DOTALL)
    except (re.error, TypeError) as e:
        raise TunelabError(f"not a regular expression: {e}", field=f"{where}.format") from e
    return RewardTerm("format", weight, lambda batch: [1.0 if regex.search(c) else 0.0 for c in batch.completions],
                      f"{where}.format")


def soft_overlong_punishment(length: int, max_tokens: int, cache: int) -> float:
    """DAPO eq. 13 for one completion of `length` tokens."""
    if length <= max_tokens - cache:
        return 0.0
    if length <= max_tokens:
        return (max_tokens - cache - length) / cache
    return -1.0


def length_term(max_tokens: int, cache: int, *, weight: float = 1.0, where: str = "rewards.0") -> RewardTerm:
    for key, value in (("max_tokens", max_tokens), ("cache", cache)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TunelabError(f"{key} must be a whole number of tokens, got {value!r}", field=f"{where}.length.{key}")
    if max_tokens < 1 or not 0 <= cache < max_tokens:
        raise TunelabError(f"need max_tokens >= 1 and 0 <= cache < max_tokens, got {max_tokens} and {cache}",
                           field=f"{where}.length")

    def score(batch: Completions) -> list[float]:
        return [soft_overlong_punishment(len(ids), max_tokens, cache) for ids in batch.completion_ids]

    return RewardTerm("length", weight, score, f"{where}.length", needs=("completion_ids",))


def load_function(spec: str, base_dir: str | Path | None = None, where: str = "rewards.0.function") -> Callable:
    """The callable `module:name` (importable) or `file.py:name` (relative to `base_dir`, else the working
    directory) names; a missing module, file or name, or a module that fails to import, is a TunelabError."""
    if not isinstance(spec, str):
        raise TunelabError(f"expected 'module:function' or 'file.py:function', got {spec!r}", field=where)
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise TunelabError(f"expected 'module:function' or 'file.py:function', got {spec!r}", field=where)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        if not path.is_file():
            raise TunelabError("reward function file not found", file=path, field=where)
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        loader = importlib.util.spec_from_file_location(f"tunelab_reward_{path.stem}_{digest}", path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except SyntaxError as e:
            raise TunelabError(f"{type(e).__name__}: {e.msg}", file=path, line=e.lineno, field=where) from e
        except Exception as e:  # noqa: BLE001 — importing user code
            raise TunelabError(f"importing it raised {type(e).__name__}: {e}", file=path, field=where) from e
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                raise TunelabError(f"no module named '{module_name}' (give an importable module, or a file as "
                                   f"'file.py:{attr}')", field=where) from e
            raise TunelabError(f"importing '{module_name}' raised {type(e).__name__}: {e}", field=where) from e
        except Exception as e:  # noqa: BLE001 — importing user code
            raise TunelabError(f"importing '{module_name}' raised {type(e).__name__}: {e}", field=where) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise TunelabError(f"'{module_name}' has no '{attr}'", field=where)
    if not callable(fn):
        raise TunelabError(f"'{module_name}:{attr}' is a {type(fn).__name__}, not a function", field=where)
    return fn


def function_term(fn: Callable, name: str | None = None, *, weight: float = 1.0,
                  where: str = "rewards.0") -> RewardTerm:
    """A user's function (see the module docstring for how it is called)."""

    def score(batch: Completions):
        columns: dict[str, list] = {}
        if batch.completion_ids is not None:
            columns["completion_ids"] = batch.completion_ids
        if batch.examples is not None:
            for column in COLUMNS:
                columns[column] = [getattr(e, column) for e in batch.examples]
        return fn(prompts=batch.prompts, completions=batch.completions, **columns)

    return RewardTerm(name or getattr(fn, "__name__", "function"), weight, score, f"{where}.function")


# --- from configuration ---------------------------------------------------------------------------

def build_rewards(entries: list[dict], base_dir: str | Path | None = None, field: str = "rewards") -> Rewards:
    """The reward a configuration's list describes (see the module docstring), e.g.

        [{task: arithmetic}, {format: '^.*=\\s*-?[0-9]', weight: 0.2},
         {length: {max_tokens: 256, cache: 64}}, {function: my_rewards.py:brevity, weight: 0.5}]

    `base_dir` is where a `file.py:function` is looked for (the recipe's folder); `field` prefixes the
    fields errors name. Two terms with one name get a suffix (`format`, `format_2`)."""
    if not isinstance(entries, list) or not entries:
        raise TunelabError("expected a non-empty list of reward terms", field=field)
    terms: list[RewardTerm] = []
    for i, entry in enumerate(entries):
        where = f"{field}.{i}"
        if not isinstance(entry, dict):
            raise TunelabError(f"expected a mapping such as {{task: arithmetic}}, got {entry!r}", field=where)
        kinds = [k for k in KINDS if k in entry]
        if len(kinds) != 1:
            raise TunelabError(f"a reward term has exactly one of {', '.join(KINDS)}"
                               + (f" (this one has {', '.join(kinds)})" if kinds else ""), field=where)
        kind = kinds[0]
        unknown = sorted(set(entry) - {kind, *COMMON, *OPTIONAL[kind]})
        if unknown:
            raise TunelabError(f"unknown key '{unknown[0]}' for a {kind} term (keys: "
                               f"{', '.join([kind, *COMMON, *OPTIONAL[kind]])})", field=f"{where}.{unknown[0]}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise TunelabError(f"weight must be a number, got {weight!r}", field=f"{where}.weight")
        value = entry[kind]
        if kind == "task":
            if not isinstance(value, str):
                raise TunelabError(f"expected a task name, got {value!r}", field=f"{where}.task")
            options = entry.get("options") or {}
            if not isinstance(options, dict):
                raise TunelabError(f"expected a mapping of task settings, got {options!r}", field=f"{where}.options")
            term = task_term(value, entry.get("field", "correct"), options, weight=float(weight), where=where)
        elif kind == "format":
            term = format_term(value, weight=float(weight), where=where)
        elif kind == "length":
            if not isinstance(value, dict) or set(value) != {"max_tokens", "cache"}:
                raise TunelabError(f"expected {{max_tokens: L, cache: C}}, got {value!r}", field=f"{where}.length")
            term = length_term(value["max_tokens"], value["cache"], weight=float(weight), where=where)
        else:
            fn = load_function(value, base_dir, f"{where}.function")
            term = function_term(fn, weight=float(weight), where=where)
        name = entry.get("name", term.name)
        if not isinstance(name, str) or not name:
            raise TunelabError(f"expected a name, got {name!r}", field=f"{where}.name")
        taken = {t.name for t in terms}
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}_{n}", n + 1
        terms.append(dataclasses.replace(term, name=unique))
    return Rewards(terms)
