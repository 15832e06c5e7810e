"""The task registry: a task is examples + prompt + answer extraction + metric, registered by name.

Adding a task touches one file: subclass `Task`, decorate with `@register_task`, and import the module
in `tunelab/tasks/__init__.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from tunelab.data.examples import Example
from tunelab.errors import TunelabError

TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls
    return cls


class Task:
    """Base class. `grade` scores one prediction; `summarize` turns graded items into metrics.

    How a task is run (`modes`, the first is the default):

    * `generate`: the prompt (`prompt`) goes through the batched generation engine and `grade` scores the
      text; every task supports it unless it overrides `modes`.
    * `loglik`: `loglik_requests` gives (context, continuation) pairs whose summed log-probabilities
      `tunelab.metrics.loglik` computes in batches; `grade_loglik` turns them into the graded item (no parsing).
    * `perplexity`: `token_ids` gives each example's token ids (a text `document` tokenised, or a prepared
      corpus's stored blocks) whose log-likelihood `tunelab.metrics.perplexity` computes with strided windows;
      `grade_perplexity` turns the per-document sums into the graded item.
    * a generate-mode task may set `max_new_tokens` (a setting) to override the evaluation's length.

    `settings` names attributes a recipe (`options:`) or the CLI may set via `configure`.
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    default_format: ClassVar[str] = "auto"
    modes: ClassVar[tuple[str, ...]] = ("generate",)
    ability: ClassVar[bool] = False  # an original ability: `--baseline` reports its retention
    # the metrics a retention verdict judges against the base's (higher is better), each with the factor that
    # puts it on 0-100 (1 for F1/EM, 100 for an accuracy in 0-1): `summarize`'s results must hold them
    retention_metrics: ClassVar[dict[str, float]] = {"f1": 1.0, "exact_match": 1.0}
    settings: ClassVar[tuple[str, ...]] = ()
    counts: ClassVar[tuple[str, ...]] = ()  # settings that are token or item counts: positive whole numbers
    reads_corpus: ClassVar[bool] = False  # `load_examples` accepts a prepared corpus directory
    # the examples' answers are the base model's own, filled in by the runner (`tunelab.eval.base_answers`) from the
    # task's `base` setting, else the evaluated model's base
    answers_from_base: ClassVar[bool] = False
    # `grade` says right or wrong ("correct"), so sampled answers (`samples:`) give pass@k; `vote` is the key of
    # `grade`'s extracted answer a majority vote counts (None: the task extracts none, no vote)
    right_or_wrong: ClassVar[bool] = False
    vote: ClassVar[str | None] = None

    def configure(self, **values: Any) -> "Task":
        """Set task settings (None leaves the default); an unknown setting is a user error."""
        for key, value in values.items():
            if key not in self.settings:
                known = ", ".join(self.settings) or "none"
                raise TunelabError(f"task '{self.name}' has no setting '{key}' (settings: {known})",
                                   field="options")
            if value is not None:
                if key in self.counts and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise TunelabError(f"{key} must be a positive whole number, got {value!r}", field=key)
                setattr(self, key, value)
        return self

    def resolve_mode(self, requested: str | None) -> str:
        """The mode to run: `requested`, or the task's default (its first) for None; a mode the task does not
        have is a user error, never a silent switch to another."""
        if requested is None:
            return self.modes[0]
        if requested not in self.modes:
            raise TunelabError(f"task '{self.name}' has no {requested} mode (modes: {', '.join(self.modes)})",
                               field="mode")
        return requested

    def default_examples(self) -> list[Example] | None:
        """The set shipped with tunelab for this task (an eval entry without a `source` uses it), or None when
        the task has none and needs data."""
        return None

    def load_examples(self, path: str | Path) -> list[Example]:
        """Read this task's evaluation file; tasks with their own file format (SQuAD JSON…) override it."""
        from tunelab.data.formats import read_examples
        return read_examples(path, self.default_format)

    def prompt(self, example: Example, template, shots: list[Example] | tuple = ()) -> str:
        """The text the model continues: the model's prompt template around the example, after `shots` (worked
        examples of the task) given as earlier turns of the conversation."""
        return template.render_prompt(example, shots)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        """Return per-item fields (at least 'correct'); they are written to the predictions file."""
        raise NotImplementedError

    def loglik_requests(self, example: Example, prompt: str) -> list[tuple[str, str]]:
        """(context, continuation) pairs to score for one example (`loglik` mode)."""
        raise NotImplementedError

    def grade_loglik(self, results: list, example: Example) -> dict[str, Any]:
        """The graded item from the `LoglikResult`s of `loglik_requests` (same order)."""
        raise NotImplementedError

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        """Return metrics for the whole set; must include `primary_metric`."""
        raise NotImplementedError


def get_task(name: str) -> Task:
    """A fresh (unconfigured) instance of a registered task. Every built-in task is registered by now:
    importing this module ran `tunelab/tasks/__init__.py` first, which imports them all."""
    if name not in TASKS:
        raise TunelabError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})", field="task")
    return TASKS[name]()


def ships_examples(cls: type[Task]) -> bool:
    """Whether the task has a set of its own (`Task.default_examples`), so an eval entry may omit its source."""
    return cls.default_examples is not Task.default_examples


def task_names(having: Callable[[type[Task]], bool]) -> list[str]:
    """The registered tasks whose class passes `having`, sorted: the choices an error message lists."""
    return sorted(name for name, cls in TASKS.items() if having(cls))
