"""One evaluation path: what to evaluate, from a recipe's `eval:` section or from `tunelab eval`'s flags.

Both hold the same validated configuration (`tunelab.recipe.EvalConfig`; `tunelab eval` converts its flags
into one at its edge), and `eval_sets` alone turns it into what is run — each entry's configured task, its
examples and its mode — before any model is loaded. So a mistake is one error with one message whichever
way it came in; the error names the recipe field (`eval.tasks.0.mode`), which `tunelab eval` shows as the
flag that set it (`--mode`).

Modes and settings:

* an entry's own `mode` must be one of its task's modes (`mode: loglik` on a squad entry, or
  `--mode squad=loglik`, is an error);
* the eval-wide `mode` (`--mode loglik`) is the mode of every entry without one of its own whose task has
  it; the others run their task's default, so `--mode loglik` over choice and squad scores choice by
  log-likelihood and generates for squad. A mode no task has is an error;
* eval-wide `options` (`--window`, `--stride`, `--segmentation`) go to every task that has the setting,
  under the entry's own `options` (`--option TASK.KEY=VALUE`). A setting no task has is an error, as is an
  entry option its task does not have, or a value the task refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.data.corpus.store import is_corpus_dir
from tunelab.data.examples import Example
from tunelab.data.sources import load_source
from tunelab.errors import TunelabError
from tunelab.recipe import EvalConfig, SourceConfig
from tunelab.tasks.registry import Task, get_task, ships_examples, task_names


@dataclass(frozen=True)
class Sampling:
    """k answers drawn a prompt besides the greedy one (`samples:`), for pass@k and majority vote."""

    samples: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class EvalSet:
    """One evaluation entry: a configured task, its examples, the mode to run, and where the data came from."""

    task: Task
    examples: list[Example]
    mode: str
    source: str = ""
    shots: list[Example] = field(default_factory=list)  # worked examples given as earlier turns, never scored
    sampling: Sampling | None = None


def eval_sets(config: EvalConfig) -> dict[str, EvalSet]:
    """{label: EvalSet} for every entry of `config`, examples loaded (and cut to `limit`)."""
    tasks = [_checked(get_task, entry.task, field=f"eval.tasks.{i}.task") for i, entry in enumerate(config.tasks)]
    _check_eval_wide(config, tasks)
    sets: dict[str, EvalSet] = {}
    for i, (entry, task) in enumerate(zip(config.tasks, tasks)):
        where = f"eval.tasks.{i}"
        if entry.label in sets:
            raise TunelabError(f"two eval entries are labelled '{entry.label}'; give one a 'name'",
                               field=f"{where}.name")
        wide = {k: v for k, v in config.options.items() if k in task.settings and k not in entry.options}
        _configure(task, wide, "eval.options")
        _configure(task, entry.options, f"{where}.options")
        if entry.mode is not None:
            mode = _checked(task.resolve_mode, entry.mode, field=f"{where}.mode")
        else:
            mode = task.resolve_mode(config.mode if config.mode in task.modes else None)
        examples, source = _examples(task, entry.source, f"{where}.source")
        shots, examples = examples[: entry.fewshot], examples[entry.fewshot:]
        if entry.fewshot and not examples:
            raise TunelabError(f"fewshot takes {entry.fewshot} worked examples from the set's {len(shots)}: none "
                               "is left to score", field=f"{where}.fewshot")
        sets[entry.label] = EvalSet(task, examples[: entry.limit] if entry.limit else examples, mode, source, shots,
                                    _sampling(config, entry, task, mode, where))
    return sets


def _sampling(config: EvalConfig, entry, task: Task, mode: str, where: str) -> Sampling | None:
    """The entry's samples (its own `samples`, else eval.samples for a task that can take them); an entry that
    asks for samples its task cannot judge, or in a mode that does not generate, is an error."""
    if entry.samples is None and (config.samples is None or not task.right_or_wrong or mode != "generate"):
        if entry.temperature is not None or entry.top_p is not None:
            key = "temperature" if entry.temperature is not None else "top_p"
            raise TunelabError("sets how answers are sampled, and the entry samples none (give samples, or "
                               "eval.samples)", field=f"{where}.{key}")
        return None
    if not task.right_or_wrong:
        able = ", ".join(task_names(lambda cls: cls.right_or_wrong))
        raise TunelabError(f"task '{task.name}' scores answers by degree, not right or wrong: pass@k needs a task "
                           f"that says which (tasks that do: {able})", field=f"{where}.samples")
    if mode != "generate":
        raise TunelabError(f"answers are sampled in generate mode; this entry runs {mode}", field=f"{where}.samples")
    return Sampling(samples=entry.samples or config.samples,
                    temperature=config.temperature if entry.temperature is None else entry.temperature,
                    top_p=config.top_p if entry.top_p is None else entry.top_p, seed=config.seed)


def _checked(func, *args, field: str, **kwargs):
    """`func(...)`, its user error re-raised naming `field` (a recipe key) as where the mistake is."""
    try:
        return func(*args, **kwargs)
    except TunelabError as e:
        raise TunelabError(e.message, file=e.file, line=e.line, field=field) from e


def _check_eval_wide(config: EvalConfig, tasks: list[Task]) -> None:
    """An eval-wide mode or setting that no task here has is a mistake (a typo, or the wrong tasks)."""
    names = ", ".join(t.name for t in tasks)
    if config.mode is not None and not any(config.mode in t.modes for t in tasks):
        owners = ", ".join(task_names(lambda cls: config.mode in cls.modes))
        raise TunelabError(f"mode {config.mode} applies to none of the tasks ({names}); it is a mode of {owners}",
                           field="eval.mode")
    if config.samples is not None and not any(t.right_or_wrong for t in tasks):
        able = ", ".join(task_names(lambda cls: cls.right_or_wrong))
        raise TunelabError(f"none of the tasks ({names}) says right or wrong, so no pass@k can be counted (tasks "
                           f"that do: {able})", field="eval.samples")
    for key in config.options:
        if not any(key in t.settings for t in tasks):
            owners = ", ".join(task_names(lambda cls: key in cls.settings)) or "no task"
            raise TunelabError(f"setting '{key}' applies to none of the tasks ({names}); it is a setting of "
                               f"{owners}", field=f"eval.options.{key}")


def _configure(task: Task, options: dict[str, Any], where: str) -> None:
    """One setting at a time, so an error names the setting it is about."""
    for key, value in options.items():
        _checked(task.configure, field=f"{where}.{key}", **{key: value})


def _examples(task: Task, source: SourceConfig | None, where: str) -> tuple[list[Example], str]:
    """The entry's examples and a description of where they came from. A task reads its own files (SQuAD
    JSON, GLUE TSV…) and, if it can, a prepared corpus directory (named as `corpus`, or as `path`); without a
    source, the set tunelab ships for the task."""
    if source is None:
        shipped = task.default_examples()
        if shipped is None:
            raise TunelabError(f"task '{task.name}' needs data: give a source (tasks with a set of their own: "
                               f"{', '.join(task_names(ships_examples)) or 'none'})",
                               field=f"{where}")
        return shipped, f"tunelab:{task.name}"
    corpus = source.corpus or (source.path if source.path and is_corpus_dir(source.path) else None)
    if corpus:
        if not task.reads_corpus:
            raise TunelabError(f"task '{task.name}' cannot read a corpus directory (tasks that can: "
                               f"{', '.join(task_names(lambda cls: cls.reads_corpus))})",
                               field=f"{where}.{'corpus' if source.corpus else 'path'}")
        return task.load_examples(corpus), corpus
    if source.path and source.format == "auto" and not source.fields:
        return task.load_examples(source.path), source.path
    label = source.path or (f"hf:{source.hf}" if source.hf else f"generate:{source.generate}")
    return load_source(source, f"{where}."), label
