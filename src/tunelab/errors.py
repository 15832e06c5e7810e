"""The one error type for user mistakes: it carries where the mistake is, so the CLI can print one line."""

from __future__ import annotations

from pathlib import Path


class TunelabError(Exception):
    """A user-facing error (bad input, bad config, missing file). The CLI prints it without a traceback.
    `field` is a recipe key (`eval.tasks.0.mode`) or, for a mistake in a command's flags, the flag (`--mode`)."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
        field = ""
        if self.field:  # a flag is shown as it is typed
            field = self.field if self.field.startswith("--") else f"field '{self.field}'"
        parts = [p for p in (where, field) if p]
        prefix = ", ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message
