"""Continuous batching, once: the rows decoding together, which rows may join them and when, and how rows join
and leave. Evaluation's `decode_rows` (decoding/embedded.py) and the server's scheduler (serve/engine.py) both keep
their running rows in a `RunningRows`, so a checkpoint's rows are batched by the same rules whichever asks.

What differs between the two is a setting, not a copy: evaluation knows every row up front and admits newcomers
only once half the batch is free (`admit_at`: prefills of many rows at a time, decode steps on the rows still
answering), the server admits a request as soon as a row is free (latency). Each caller owns what happens to a
row's tokens (the server's isolation of one request's failure, its streams and log-probabilities; evaluation's
stop strings and sampled rollouts).
"""

from __future__ import annotations

from tunelab.decoding.batch import DecodeBatch


class RunningRows:
    """The running `DecodeBatch`, each row's next token on the device (`tokens`) and each row's owner (`owners`:
    whatever the caller tracks a row by, in batch order).

    `room()` says how many rows may join now, `join` merges freshly prefilled rows in, `leave` drops rows (the
    last rows move into their places: the owners' order changes with the batch's), `step` decodes one token for
    every row. The first rows to join reserve the cache for `capacity` rows, so later ones are written into free
    cache rows instead of moving the rows already there."""

    def __init__(self, capacity: int, admit_at: int = 1):
        self.capacity = max(1, int(capacity))
        self.admit_at = max(1, int(admit_at))
        self.clear()

    def clear(self) -> None:
        """Forget every row (all finished, or the batch failed)."""
        self.batch: DecodeBatch | None = None
        self.tokens = None
        self.owners: list = []

    def __len__(self) -> int:
        return len(self.owners)

    def room(self) -> int:
        """Rows that may join now: all `capacity` when nothing runs; else none while a batch that cannot take rows
        mid-flight runs (a sliding-window cache: it drains first) or fewer than `admit_at` rows are free."""
        free = self.capacity - len(self.owners)
        if not self.owners:
            return free
        return free if self.batch.mergeable and free >= self.admit_at else 0

    def join(self, batch: DecodeBatch, tokens, owners: list) -> None:
        """Merge newly prefilled rows (`batch`, their next tokens on the device, their owners) into the running
        ones."""
        import torch
        if not self.owners:
            batch.reserve(self.capacity)
            batch.trim()
            self.batch, self.tokens, self.owners = batch, tokens, list(owners)
            return
        self.batch.extend(batch)
        self.tokens = torch.cat([self.tokens, tokens], dim=0)
        self.owners = self.owners + list(owners)

    def leave(self, rows: list[int]) -> None:
        """Drop the rows at these batch indices; the cache columns no row uses any more go too."""
        if not rows:
            return
        if len(rows) == len(self.owners):
            self.clear()
            return
        order, self.tokens = self.batch.remove(rows, self.tokens)
        self.owners = [self.owners[i] for i in order]
        self.batch.trim()

    def step(self):
        """Feed each row its next token (`tokens`); returns the next logits, (rows, vocab) float32."""
        return self.batch.step(self.tokens)
