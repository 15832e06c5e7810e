"""Graceful preemption: SIGTERM or SIGUSR1 asks a training run to stop at the end of the current optimizer step.

SLURM, Kubernetes and spot instances send SIGTERM before they stop a job, and SLURM can send SIGUSR1 ahead of
time (`--signal=USR1@300`); by default either ended the run at once and lost the work since its last checkpoint.
While `StopSignals` is active, the first signal only sets `received`: the loop finishes its step, writes a
checkpoint and stops with `errors.Preempted`. A second signal stops the process at once (the default action),
for when the first one's checkpoint takes too long to wait for.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class StopSignals:
    """A context in which the stop signals are noted instead of killing the process (main thread only: Python
    delivers signals there, and elsewhere they keep their usual handlers)."""

    def __init__(self):
        self.received: str | None = None
        self._acted = False
        self._previous: dict = {}

    def acknowledge(self) -> None:
        """The run has stopped for the signal: leaving the context does not deliver it again."""
        self._acted = True

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if self.received and not self._acted:  # noted but not acted on (setup, or nothing left to train)
            os.kill(os.getpid(), getattr(signal, self.received))
