"""The one error type for user mistakes: it carries where the mistake is, so the CLI can print one line."""

from __future__ import annotations

from pathlib import Path


class TunelabError(Exception):
    """A user-facing error (bad input, bad config, missing file). The CLI prints it without a traceback.
    `field` is a recipe key (`eval.tasks.0.mode`) or, for a mistake in a command's flags, the flag (`--mode`)."""

    exit_code = 2
    kind = "error"  # how the CLI's one line starts: "tunelab: error: …"

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None, resumable: bool = False):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.resumable = resumable  # a run that stopped with its last checkpoint whole: the CLI says how to resume
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


class Preempted(TunelabError):
    """A run stopped on request (SIGTERM, SIGUSR1: what SLURM, Kubernetes and spot instances send before they
    stop a job) after writing a checkpoint. Its own exit status, 75 (EX_TEMPFAIL, "try again later"), lets a
    job script tell "requeue me" from a failure."""

    exit_code = 75
    kind = "stopped"

    def __init__(self, message: str, *, file: str | Path | None = None):
        super().__init__(message, file=file, resumable=True)
