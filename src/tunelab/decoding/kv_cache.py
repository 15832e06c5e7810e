"""A KV cache that is written in place, and whose rows come and go without copying the others.

transformers' `DynamicLayer` grows by `torch.cat` on each decode step, copying the whole cache of every
layer: for the evaluation engine at batch 64 that was a fifth of the time. `ReservedLayer` keeps the same
interface (`keys`/`values` hold exactly the cached rows and length, so masks and lengths work unchanged) but
they are views of a buffer of (slots, heads, columns, dim) with room around them: a step writes one column;
rows that join a running batch (the server's continuous batching, the evaluation engine's refills) are written
into free slots, and rows that leave are replaced by the last rows, so neither copies the rows that stay.
A buffer is only moved when it runs out of room, and then with room to spare in proportion to its size, so
moves get rarer as it grows. Code that assigns `keys`/`values` itself still works: the next write moves them
into a fresh buffer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are `buffer[:rows, :, start:start + length]`: `capacity` columns at
    first, then at least `grow` more each time it has to move."""

    def __init__(self, capacity: int, grow: int = 64):
        super().__init__()
        self.capacity, self.grow = capacity, grow
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._start = 0                 # first column of the window
        self._views: tuple = ()         # the keys/values views this layer made last

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # transformers starts from torch.tensor([]): a copy from the host, which waits for a GPU
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys, self.values = key_states.new_empty(0), value_states.new_empty(0)
        self.is_initialized = True

    def _owns(self) -> bool:
        """True while keys/values are still the views this layer made of its buffer."""
        return bool(self._views) and self.keys is self._views[0] and self.values is self._views[1]

    def _rows(self) -> int:
        return self.keys.shape[0] if self.get_seq_length() else 0

    def _room(self) -> int:
        """Free columns after the window."""
        return self._k.shape[-2] - self._start - self.get_seq_length() if self._owns() else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        rows = key_states.shape[0]
        if not self._owns():
            self._take_over(key_states, length + new)
        elif self._start + length + new > self._k.shape[-2]:
            self._move(0, new, self._k.shape[0])
        at = self._start + length
        self._k[:rows, :, at:at + new] = key_states
        self._v[:rows, :, at:at + new] = value_states
        self._view(rows, length + new)
        return self.keys, self.values

    def _take_over(self, like: torch.Tensor, end: int) -> None:
        """A buffer of this layer's own for keys/values it did not make (or has not yet): `capacity` columns
        the first time, `grow` to spare after that."""
        batch, heads, _, dim = like.shape
        columns = max(end, self.capacity) if self._k is None else end + self.grow
        k, v = like.new_empty(batch, heads, columns, dim), like.new_empty(batch, heads, columns, dim)
        n = self.get_seq_length()
        if n:
            k[:, :, :n] = self.keys
            v[:, :, :n] = self.values
        self._k, self._v, self._start = k, v, 0

    def _move(self, lead: int, tail: int, slots: int) -> None:
        """Move the window into a fresh buffer of `slots` rows with at least `lead` free columns before it and
        `tail` after it, plus room as large again as the window (half before, half after), so that the next
        move is as far off as this cache is long: one copy of the window."""
        length, rows = self.get_seq_length(), self._rows()
        spare = max(length, self.grow)
        before = lead + spare // 2
        columns = before + length + tail + spare - spare // 2
        heads, dim = self.keys.shape[1], self.keys.shape[-1]
        k, v = self.keys.new_empty(slots, heads, columns, dim), self.values.new_empty(slots, heads, columns, dim)
        k[:rows, :, before:before + length] = self.keys
        v[:rows, :, before:before + length] = self.values
        self._k, self._v, self._start = k, v, before
        self._view(rows, length)

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take buffers written elsewhere (the tree prefill gathers each row's keys and values into them): their
        first `length` positions are the cache, the rest is room."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._k, self._v, self._start = keys, values, 0
        self._view(keys.shape[0], length)

    def _view(self, rows: int, length: int) -> None:
        window = slice(self._start, self._start + length)
        self.keys, self.values = self._k[:rows, :, window], self._v[:rows, :, window]
        self._views = (self.keys, self.values)

    def reserve(self, slots: int) -> None:
        """Make room for `slots` rows, so rows that join later are written without moving these."""
        if not self._owns() or self._k.shape[0] < slots:
            self._move(0, self._room(), slots)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self._owns():
            return super().batch_repeat_interleave(repeats)
        n, rows = self.get_seq_length(), self._rows()
        self._k, self._v = (self._repeat_filled(buf[:rows], self._start, n, repeats) for buf in (self._k, self._v))
        self._view(rows * repeats, n)

    @staticmethod
    def _repeat_filled(buf: torch.Tensor, start: int, n: int, repeats: int) -> torch.Tensor:
        """`buf.repeat_interleave(repeats, 0)` with the same room, copying only the `n` filled positions (a
        shared template header fills a third of the buffer its prefill reserved for the whole rows)."""
        batch, heads, length, dim = buf.shape
        out = buf.new_empty(batch * repeats, heads, length, dim)
        out.view(batch, repeats, heads, length, dim)[:, :, :, start:start + n] = buf[:, None, :, start:start + n]
        return out

    def crop_front(self, first: int) -> None:
        """Drop the first `first` positions (padding in every row), keeping the room after the end."""
        n = self.get_seq_length()
        if not self._owns():
            self.keys, self.values = self.keys[:, :, first:], self.values[:, :, first:]
            return
        self._start += first
        self._view(self._rows(), n - first)

    def append_rows(self, other: ReservedLayer, width: int) -> None:
        """Take in `other`'s rows below these, both left-padded with zeros to `width` positions: they are written
        into free slots, and the window widens to the left into free columns (zeroed for these rows). Only when
        slots or columns run out does the buffer move (`_move`), keeping the larger of the two rooms after it."""
        mine, theirs = self.get_seq_length(), other.get_seq_length()
        rows, joining = self._rows(), other.keys.shape[0]
        wider = width - mine
        slots = self._k.shape[0] if self._owns() else 0
        if not self._owns() or self._start < wider or slots < rows + joining:
            self._move(wider, max(self._room(), other._room(), 1), max(rows + joining, slots))
        self._start -= wider
        at = self._start
        for buf, new in ((self._k, other.keys), (self._v, other.values)):
            if wider:    # masked, but never garbage: 0 x NaN would still be NaN
                buf[:rows, :, at:at + wider].zero_()
            buf[rows:rows + joining, :, at:at + width - theirs].zero_()
            buf[rows:rows + joining, :, at + width - theirs:at + width] = new
        self._view(rows + joining, width)

    def keep_rows(self, order: list[int]) -> None:
        """Keep rows `order` (row i becomes old row order[i]), copying only the rows that move."""
        if not self._owns():
            return super().batch_select_indices(torch.tensor(order, device=self.keys.device))
        n, window = self.get_seq_length(), slice(self._start, self._start + self.get_seq_length())
        for i, j in enumerate(order):
            if i != j:
                self._k[i, :, window] = self._k[j, :, window]
                self._v[i, :, window] = self._v[j, :, window]
        self._view(len(order), n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self._owns():
            return super().batch_select_indices(indices)
        n, rows = self.get_seq_length(), self._rows()
        self._k, self._v = self._k[:rows][indices], self._v[:rows][indices]
        self._view(len(indices), n)


def reserved_cache(config, capacity: int, grow: int = 64) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers reserve `capacity` positions up front.

    Sliding-window layers (which trim themselves) keep transformers' own class.
    """
    cache = DynamicCache(config=config)
    cache.layers = [ReservedLayer(capacity, grow) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache
