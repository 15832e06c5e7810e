"""The training rows of a fine-tuning run, in the order every run of the same recipe sees them: epoch after
epoch, each a fresh seeded shuffle of the encoded samples, packed into rows. A step asks for rows by position
(`rows(start, count)`), so a resumed run picks up mid-epoch on exactly the rows it would have had.
A prepared corpus has its own stream with the same interface (`corpus_rows.CorpusRows`).
"""

from __future__ import annotations

import random

from tunelab.data.packing import Encoded, Row, pack_examples, packing_efficiency, unpacked_rows


class RowStream:
    """The deterministic sequence of training rows: epoch e shuffles samples with seed+e, then packs them.

    Only the epoch being read and the one before it are held (a step's rows may straddle the two); earlier ones
    are dropped and only their lengths kept, so a run of many epochs holds as much as a run of two."""

    def __init__(self, encoded: list[Encoded], max_len: int, packing: bool, seed: int, prefix: int = 0):
        self.encoded, self.max_len, self.packing, self.seed, self.prefix = encoded, max_len, packing, seed, prefix
        self._held: dict[int, list[Row]] = {}   # epoch -> its rows: at most the last two asked for
        self._lengths: list[int] = []          # rows in each epoch packed so far

    def _pack(self, e: int) -> list[Row]:
        order = list(self.encoded)
        random.Random(self.seed + e).shuffle(order)
        return pack_examples(order, self.max_len, prefix=self.prefix) if self.packing else unpacked_rows(order)

    def _epoch(self, e: int) -> list[Row]:
        if e not in self._held:
            self._held = {k: v for k, v in self._held.items() if k == e - 1}  # dropped before the next is packed
            rows = self._held[e] = self._pack(e)
            if e == len(self._lengths):
                self._lengths.append(len(rows))
        return self._held[e]

    def _length(self, e: int) -> int:
        """Rows in epoch e, packing (and dropping) the epochs before it as needed."""
        while len(self._lengths) <= e:
            rows = self._pack(len(self._lengths))
            self._lengths.append(len(rows))
        return self._lengths[e]

    @property
    def rows_per_epoch(self) -> int:
        return self._length(0)

    @property
    def padding_pct(self) -> float:
        """Padding in a rows × max_len grid of the first epoch."""
        return 100 * (1 - packing_efficiency(self._epoch(0), self.max_len))

    def rows(self, start: int, count: int) -> list[Row]:
        """Rows [start, start+count) of the endless epoch-after-epoch stream."""
        out, e, offset = [], 0, start
        while offset >= self._length(e):
            offset -= self._length(e)
            e += 1
        while len(out) < count:
            rows = self._epoch(e)
            take = rows[offset: offset + count - len(out)]
            out += take
            offset += len(take)
            if offset >= len(rows):
                e, offset = e + 1, 0
        return out


class ShuffledRows:
    """The deterministic sequence of rows that are not packed (a preference pair; a prompt to sample answers
    to): epoch e is a shuffle of them with seed+e."""

    def __init__(self, rows: list, seed: int):
        self.items, self.seed = rows, seed
        self.padding_pct = 0.0  # not a packed grid: a row is padded to its micro-batch only
        self.prefix = 0
        self._epochs: dict[int, list] = {}

    @property
    def rows_per_epoch(self) -> int:
        return len(self.items)

    def _epoch(self, e: int) -> list:
        if e not in self._epochs:
            order = list(self.items)
            random.Random(self.seed + e).shuffle(order)
            self._epochs = {e: order, **{k: v for k, v in self._epochs.items() if k == e - 1}}
        return self._epochs[e]

    def rows(self, start: int, count: int) -> list:
        out, n = [], len(self.items)
        for i in range(start, start + count):
            out.append(self._epoch(i // n)[i % n])
        return out
