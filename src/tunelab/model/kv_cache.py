"""A KV cache that is written in place instead of re-concatenated every step.

transformers' `DynamicLayer` grows by `torch.cat` on each decode step, copying the whole cache of every
layer: for the evaluation engine at batch 64 that was a fifth of the time. `ReservedLayer` keeps the same
interface (`keys`/`values` hold exactly the cached length, so masks and lengths work unchanged) but they are
views of a buffer with room to spare; a step writes one position. Code that assigns `keys`/`values` itself
(the server merges and trims caches) still works: the next write moves them into a fresh buffer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views into a buffer: `capacity` positions at first, then
    `grow` more each time it fills up or its keys were replaced from outside."""

    def __init__(self, capacity: int, grow: int = 64):
        super().__init__()
        self.capacity, self.grow = capacity, grow
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _owns(self) -> bool:
        """True while keys/values are still the views this layer made of its buffer."""
        return (self._k is not None and self.keys is not None and self.keys.shape[0] == self._k.shape[0]
                and self.keys.data_ptr() == self._k.data_ptr() and self.values.data_ptr() == self._v.data_ptr())

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if not self._owns() or end > self._k.shape[-2]:
            self._reserve(key_states, max(end, self.capacity) if self._k is None else end + self.grow)
        self._k[:, :, start:end] = key_states
        self._v[:, :, start:end] = value_states
        self._view(end)
        return self.keys, self.values

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take buffers written elsewhere (the tree prefill gathers each row's keys and values into them): their
        first `length` positions are the cache, the rest is room."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._k, self._v = keys, values
        self._view(length)

    def _reserve(self, like: torch.Tensor, length: int) -> None:
        batch, heads, _, dim = like.shape
        k = like.new_empty(batch, heads, length, dim)
        v = like.new_empty(batch, heads, length, dim)
        n = self.get_seq_length()
        if n:
            k[:, :, :n] = self.keys
            v[:, :, :n] = self.values
        self._k, self._v = k, v

    def _view(self, length: int) -> None:
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self._owns():
            return super().batch_repeat_interleave(repeats)
        n = self.get_seq_length()
        self._k, self._v = (self._repeat_filled(buf, n, repeats) for buf in (self._k, self._v))
        self._view(n)

    @staticmethod
    def _repeat_filled(buf: torch.Tensor, n: int, repeats: int) -> torch.Tensor:
        """`buf.repeat_interleave(repeats, 0)` with the same room, copying only the `n` filled positions (a
        shared template header fills a third of the buffer its prefill reserved for the whole rows)."""
        batch, heads, length, dim = buf.shape
        out = buf.new_empty(batch * repeats, heads, length, dim)
        out.view(batch, repeats, heads, length, dim)[:, :, :, :n] = buf[:, None, :, :n]
        return out

    def crop_front(self, first: int) -> None:
        """Drop the first `first` positions (padding in every row), keeping the room after the end."""
        n = self.get_seq_length()
        if not self._owns():
            self.keys, self.values = self.keys[:, :, first:], self.values[:, :, first:]
            return
        self._k, self._v = self._k[:, :, first:], self._v[:, :, first:]
        self._view(n - first)

    def append_rows(self, other: ReservedLayer, width: int) -> None:
        """Take in `other`'s rows below these, both left-padded with zeros to `width` positions, into one new
        buffer with the larger of the two rooms to spare (one copy, where cat-then-reserve made two)."""
        mine, theirs = self.get_seq_length(), other.get_seq_length()
        room = max(self._room(), other._room(), 1)
        b1, heads, _, dim = self.keys.shape
        b2 = other.keys.shape[0]
        k = self.keys.new_empty(b1 + b2, heads, width + room, dim)
        v = self.values.new_empty(b1 + b2, heads, width + room, dim)
        for buf, a, b in ((k, self.keys, other.keys), (v, self.values, other.values)):
            buf[:b1, :, :width - mine].zero_()       # masked, but never garbage: 0 x NaN would still be NaN
            buf[b1:, :, :width - theirs].zero_()
            buf[:b1, :, width - mine:width] = a
            buf[b1:, :, width - theirs:width] = b
        self._k, self._v = k, v
        self._view(width)

    def _room(self) -> int:
        return self._k.shape[-2] - self.get_seq_length() if self._owns() else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self._owns():
            return super().batch_select_indices(indices)
        n = self.get_seq_length()
        self._k, self._v = self._k[indices], self._v[indices]
        self._view(n)


def reserved_cache(config, capacity: int, grow: int = 64) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers reserve `capacity` positions up front.

    Sliding-window layers (which trim themselves) keep transformers' own class.
    """
    cache = DynamicCache(config=config)
    cache.layers = [ReservedLayer(capacity, grow) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache
