"""Where the UI's Runs and Train tabs may read and write: the project directory (its recipes/, its models and
data) and the runs directory, nothing else.

A path typed in the browser is a request from whoever reaches the page: `../../etc/passwd`, `/home/me/.ssh`, or a
symlink inside the project that points out of it must never be read, shown or written. Every path is resolved
(symlinks followed, `..` collapsed) before it is compared, so each of those is refused with the same one message.
Starting, stopping and exporting runs processes and writes files: a page served beyond localhost allows them only
behind the login (`tunelab ui --auth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
OUTSIDE = "not inside the project or runs directory; the UI reads and writes nothing else"
LOGIN_NEEDED = ("starting, stopping or exporting runs from a page served beyond localhost needs a login: "
                "restart the UI with --auth USER:PASS")


@dataclass(frozen=True)
class Places:
    """The project directory (relative recipe paths, `recipes/*.yaml`, where `tunelab run` is started) and the
    runs directory (the runs the Runs tab lists), both resolved; `actions_allowed`: whether this page may start,
    stop and export (`actions_allowed_for`)."""

    project: Path
    runs: Path
    actions_allowed: bool = True

    @classmethod
    def of(cls, project: str | Path = ".", runs: str | Path = "runs", actions_allowed: bool = True) -> "Places":
        project_dir = Path(project).resolve()
        runs_dir = Path(runs)
        return cls(project_dir, (runs_dir if runs_dir.is_absolute() else project_dir / runs_dir).resolve(),
                   actions_allowed)

    def confine(self, path: str | Path) -> Path:
        """`path` (relative to the project directory) resolved, if it lies inside the project or runs directory;
        else one error, whatever the way out was (`..`, an absolute path, a symlink)."""
        text = str(path).strip()
        if not text or "\x00" in text:
            raise TunelabError("no path given" if not text else OUTSIDE, file=text or None)
        p = Path(text).expanduser()
        try:
            resolved = (p if p.is_absolute() else self.project / p).resolve()
        except (OSError, RuntimeError) as err:  # a symlink loop
            raise TunelabError(OUTSIDE, file=text) from err
        if not any(resolved == root or root in resolved.parents for root in (self.project, self.runs)):
            raise TunelabError(OUTSIDE, file=text)
        return resolved

    def shown(self, path: Path) -> str:
        """A path as the page shows it: relative to the project directory where it lies in it."""
        try:
            return path.relative_to(self.project).as_posix()
        except ValueError:
            return str(path)

    def check_action(self) -> None:
        if not self.actions_allowed:
            raise TunelabError(LOGIN_NEEDED)


def actions_allowed_for(host: str, auth: tuple[str, str] | None) -> bool:
    """Start, Stop and export are offered on localhost, or anywhere behind a login."""
    return host in LOCAL_HOSTS or auth is not None
