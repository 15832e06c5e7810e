"""A sweep's search space: SPACE.yaml, one dotted recipe field per key and what it may take.

    lora.rank: [4, 8, 16]                                # choices (shorthand)
    lora.target_modules: {choices: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]}
    train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}    # a log-uniform range
    data.train.0.count: {low: 2000, high: 8000, step: 2000}   # integers when low, high (and step) are

A key is any field `--set` takes (`data.train.0.count` indexes a list). A range is an integer range when its
bounds are integers, else a float range. A choice may be any YAML value: Optuna's categorical choices are
scalars only, so a list or mapping choice is handed to Optuna as its YAML flow text (`[q_proj, v_proj]`) and
read back for the recipe; the study, its table and its plots show that text.

Each dimension is checked when the space is read: its shape here, and each of its extremes (every choice, both
bounds) applied to the recipe and validated, so a misspelt field or a value the recipe refuses is one error
naming the space file's line before any trial starts, not a failed trial hours in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError
from tunelab.recipe import line_of_key, recipe_from_raw, set_field

_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Dimension:
    """One searched field: `choices` (values as the recipe takes them), or a range `low`..`high` (`log`: sampled
    log-uniformly; `step`: a grid), integer when `integer`."""

    field: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial, as the recipe takes it."""
        if self.choices is not None:
            shown = trial.suggest_categorical(self.field, [encode_choice(c) for c in self.choices])
            return decode_choice(shown, self.choices)
        if self.integer:
            return trial.suggest_int(self.field, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.field, self.low, self.high, step=self.step, log=self.log)

    def param_of(self, value: Any) -> Any | None:
        """The Optuna parameter for the recipe value `value`, or None when it lies outside this dimension (a
        recipe's own setting that is not among the choices or not in the range)."""
        if self.choices is not None:
            return encode_choice(value) if value in self.choices else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return None
        if self.integer:
            if int(value) != value or (int(value) - int(self.low)) % int(self.step or 1):
                return None
            return int(value)
        if self.step is not None and not math.isclose((value - self.low) / self.step,
                                                      round((value - self.low) / self.step), abs_tol=1e-9):
            return None
        return float(value)

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def encode_choice(value: Any) -> Any:
    """A choice as Optuna holds it: scalars as they are, lists and mappings as their one-line YAML text."""
    if isinstance(value, _SCALARS):
        return value
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()


def decode_choice(shown: Any, choices: tuple) -> Any:
    for c in choices:
        if encode_choice(c) == shown:
            return c
    raise ValueError(f"{shown!r} is not one of this dimension's choices")


@dataclass(frozen=True)
class Space:
    """The dimensions of a sweep, in the order the space file lists them, and the file they came from."""

    dimensions: tuple[Dimension, ...]
    file: Path
    raw: dict

    def suggest(self, trial) -> dict[str, Any]:
        """{field: value} for a trial: what its recipe sets."""
        return {d.field: d.suggest(trial) for d in self.dimensions}

    def grid_size(self) -> int | None:
        """How many combinations a space of choices only holds; None when a dimension is a range."""
        if any(d.choices is None for d in self.dimensions):
            return None
        return math.prod(len(d.choices) for d in self.dimensions)

    def params_of(self, raw_recipe: dict) -> dict[str, Any] | None:
        """The Optuna parameters of the recipe as written (its own values of the searched fields), or None when
        one of them is missing or lies outside the space."""
        out = {}
        for d in self.dimensions:
            try:
                value = _get_field(raw_recipe, d.field)
            except LookupError:
                return None
            param = d.param_of(value)
            if param is None:
                return None
            out[d.field] = param
        return out


def _get_field(raw: Any, dotted: str) -> Any:
    node = raw
    for key in dotted.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise LookupError(dotted)
    return node


def load_space(path: str | Path, raw_recipe: dict, recipe_file: Path) -> Space:
    """Read and check SPACE.yaml against the recipe (as written, overrides applied) it searches."""
    from tunelab.records import read_yaml
    path = Path(path)
    raw, text = read_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise TunelabError("a search space is a YAML mapping of dotted recipe fields to choices or ranges "
                           "(e.g. `train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}`)", file=path)
    dims = []
    for key, spec in raw.items():
        where = {"file": path, "line": line_of_key(text, (key,)), "field": str(key)}
        if not isinstance(key, str) or not key.strip() or "" in key.split("."):
            raise TunelabError("a key is a dotted recipe field such as train.lr", **where)
        dim = _dimension(key, spec, where)
        _check_against_recipe(dim, raw_recipe, recipe_file, where)
        dims.append(dim)
    return Space(tuple(dims), path, raw)


def _dimension(key: str, spec: Any, where: dict) -> Dimension:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise TunelabError("expects choices (a list, or {choices: [...]}) or a range ({low: .., high: .., "
                           "log: true|false, step: ..})", **where)
    unknown = set(spec) - {"choices", "low", "high", "log", "step"}
    if unknown:
        raise TunelabError(f"unknown setting {', '.join(sorted(map(str, unknown)))} (a dimension has choices, or "
                           "low/high with log or step)", **where)
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise TunelabError("choices stand alone: low/high/log/step describe a range", **where)
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TunelabError("choices is a non-empty list", **where)
        shown = [encode_choice(c) for c in choices]
        if len(set(map(repr, shown))) != len(shown):
            raise TunelabError("a choice is listed twice", **where)
        return Dimension(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise TunelabError("a range needs both low and high (or give choices)", **where)
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise TunelabError(f"{name} is a number, got {v!r}", **where)
    if not isinstance(log, bool):
        raise TunelabError(f"log is true or false, got {log!r}", **where)
    if not low < high:
        raise TunelabError(f"low ({low}) must be below high ({high})", **where)
    if log and low <= 0:
        raise TunelabError(f"a log range needs low > 0, got {low}", **where)
    if log and step is not None:
        raise TunelabError("a range is either log or stepped, not both", **where)
    if step is not None and step <= 0:
        raise TunelabError(f"step must be positive, got {step}", **where)
    integer = all(isinstance(v, int) for v in (low, high, step) if v is not None)
    return Dimension(key, low=low, high=high, log=log, step=step, integer=integer)


def _check_against_recipe(dim: Dimension, raw_recipe: dict, recipe_file: Path, where: dict) -> None:
    """Each extreme of the dimension set into the recipe must give a valid recipe."""
    import copy
    for value in dim.extremes():
        raw = copy.deepcopy(raw_recipe)
        try:
            set_field(raw, dim.field, value)
            recipe_from_raw(raw, recipe_file, check_data=False)
        except TunelabError as e:
            raise TunelabError(f"{dim.field} = {encode_choice(value)!s} does not give a valid recipe: "
                               f"{e.message}", **where) from e
