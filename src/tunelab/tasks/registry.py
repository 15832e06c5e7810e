"""The task registry: a task is examples + prompt + answer extraction + metric, registered by name.

Adding a task touches one file: subclass `Task`, decorate with `@register_task`, and import the module
in `tunelab/tasks/__init__.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tunelab.data.examples import Example
from tunelab.errors import TunelabError

TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls
    return cls


class Task:
    """Base class. `grade` scores one prediction; `summarize` turns graded items into metrics."""

    name: ClassVar[str]
    primary_metric: ClassVar[str] = "accuracy"
    default_format: ClassVar[str] = "auto"

    def load_examples(self, path: str | Path) -> list[Example]:
        """Read this task's evaluation file; tasks with their own file format (SQuAD JSON…) override it."""
        from tunelab.data.formats import read_examples
        return read_examples(path, self.default_format)

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        """Return per-item fields (at least 'correct'); they are written to the predictions file."""
        raise NotImplementedError

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        """Return metrics for the whole set; must include `primary_metric`."""
        raise NotImplementedError


def get_task(name: str) -> Task:
    import tunelab.tasks  # noqa: F401  (registers the built-in tasks)
    if name not in TASKS:
        raise TunelabError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})", field="task")
    return TASKS[name]()
