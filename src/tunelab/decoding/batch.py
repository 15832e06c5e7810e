"""A batch of rows decoding together: the KV cache, the mask and each row's position, on the device.

A batch's prefill runs the prefixes its rows share once, as a packed trie, where a check finds that gives the
padded prefill's logits (`tree_prefill.py`).

Shaped for a GPU: a decode step makes the host wait for the device once — for the few numbers it needs (the next
tokens, and the log-probabilities a request asked for), copied together — and everything else stays on the
device: sampling, the next step's input, each row's position. The host keeps the batch's layout (which columns
are padding) itself instead of reading it back from the mask, rows join and leave the KV cache without copying
the rows that stay (`kv_cache.py`), and log-probabilities are taken a chunk of positions at a time.
"""

from __future__ import annotations

from tunelab.decoding.forward import forward, last_logits, logits_at, to_device

# a shorter shared prefix is not worth its extra forward pass
MIN_SHARED_PREFIX = 4


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the prefill's last)."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _growing(cache) -> bool:
    """Every layer of the cache keeps all positions (no sliding window)."""
    from tunelab.decoding.kv_cache import ReservedLayer
    return all(type(layer) is ReservedLayer for layer in cache.layers)


_tree_verified: dict[tuple, bool] = {}    # (model class, model type, attention, dtype) -> tree prefill allowed


def tree_prefill_ok(model) -> bool:
    """Whether `DecodeBatch.prefill` may run `model`'s rows as a trie (`tree_prefill.py`): its attention
    implementation is one that module can call, and on random rows (shared prefixes, a duplicate, a row that is
    another's prefix, one alone) the trie gives the padded prefill's logits and, after one decode step, the same
    logits again. Checked once per model class and architecture, attention implementation and dtype; never
    when the `tree_attention` patch is not active (`model.patches`)."""
    from tunelab.decoding.tree_prefill import SUPPORTED
    from tunelab.model.patches import active
    if not active("tree_attention"):
        return False
    own = getattr(model.config, "_attn_implementation", None)
    # the architecture too: a peft wrapper's class is the same whatever model it wraps
    key = (type(model), getattr(model.config, "model_type", None), own, model.dtype)
    if key not in _tree_verified:
        _tree_verified[key] = own in SUPPORTED and _tree_agrees(model)
    return _tree_verified[key]


def _tree_agrees(model) -> bool:
    import torch

    from tunelab.decoding.kv_cache import reserved_cache
    from tunelab.decoding.tree_prefill import tree_prefill

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    head, a, b, c = (torch.randint(0, vocab, (k,), generator=g).tolist() for k in (6, 3, 2, 4))
    rows = [head + a, head + b + c, head + a, head[:4], c]
    tol = 1e-4 if model.dtype == torch.float32 else 3e-2
    try:
        with torch.inference_mode():
            padded, want = DecodeBatch.prefill(model, rows, 0, 2, share_prefix=False)
            cache = reserved_cache(model.config, max(map(len, rows)) + 2)
            mask, next_pos, got = tree_prefill(model, rows, cache, 2, logits_at)
            tree = DecodeBatch(model, cache, mask, next_pos, *_left_padding(rows, mask.shape[1]))
            tokens = want.argmax(-1).to(device)
            pairs = [(want, got), (padded.step(tokens), tree.step(tokens))]
    except Exception:  # an architecture the trie cannot drive keeps the padded prefill
        return False
    return all(w.shape == t.shape and bool((w - t).abs().max() <= tol * w.abs().max().clamp(min=1))
               for w, t in pairs)


def _left_padding(rows: list[list[int]], width: int) -> tuple[list[int], list[int]]:
    """Each row's first column and padding columns when its tokens are left-padded to `width`."""
    pads = [width - len(r) for r in rows]
    return pads, list(pads)


def _moved(t, order: list[int]):
    """`t[order]` for an order made by `DecodeBatch.remove`, as in-place copies of the rows that move (no index
    tensor to send to the device)."""
    for i, j in enumerate(order):
        if i != j:
            t[i] = t[j]
    return t[:len(order)]


class DecodeBatch:
    """Rows of different lengths decoding together, left-padded. On the device: a KV cache written in place
    (`kv_cache.ReservedLayer`), the attention mask over the cached positions, each row's next position. On the
    host: each row's first real column and its number of padding columns — the layout the host made, kept so
    that it never has to read it back from the device.

    `prefill` starts a batch, `step` feeds one token per row, `remove` drops rows, `extend` takes in the rows of
    another batch (continuous batching), `reserve` makes room for rows to come, `trim` drops cache columns no
    row uses, `select` gathers rows (a context once per continuation, for scoring)."""

    def __init__(self, model, cache, mask, next_pos, first: list[int], pads: list[int]):
        self.model, self.cache, self.mask, self.next_pos = model, cache, mask, next_pos
        self.first, self.pads = first, pads

    @property
    def mask(self):
        """The attention mask over the cached columns, (rows, width): a view of a buffer with room to the right,
        already ones, so that a decode step writes no new mask (it was a copy of the whole mask a token)."""
        return self._mask_buffer[:, :self._width]

    @mask.setter
    def mask(self, value) -> None:
        self._mask_buffer, self._width = value, value.shape[1]

    def __len__(self) -> int:
        return self._mask_buffer.shape[0]

    @property
    def device(self):
        return self.mask.device

    @classmethod
    def prefill(cls, model, rows: list[list[int]], pad_id: int, room: int, share_prefix: bool = True,
                all_logits: bool = False):
        """Run token rows into a fresh cache with `room` positions to spare; returns (batch, logits).

        A prompt-tuned model's virtual tokens (`model.virtual_tokens`) run first, once, and every row's cache starts
        from theirs. With `share_prefix`, prefixes the rows share run once: as a trie with no padding (`tree_prefill.py`)
        where that is allowed, else the prefix common to all rows (a template header), whose cache is copied
        to every row, with pads between it and each row's own tokens. The logits are each row's
        last position's, (n, vocab) float32 — or with `all_logits`, the model's logits at every position of
        the (prefix-free) input, (n, width, vocab) in the model's dtype, for prompt log-probabilities
        (`token_logprobs` takes them a chunk of positions at a time)."""
        import torch

        from tunelab.decoding.kv_cache import reserved_cache
        from tunelab.decoding.tree_prefill import tree_prefill

        from tunelab.model.virtual_tokens import peft_inner_model, prefixed_inputs, virtual_tokens

        device = next(model.parameters()).device
        n = len(rows)
        prompts = virtual_tokens(model)  # prompt tuning's: the cache's first columns, before any shared prefix
        virtual = 0 if prompts is None else prompts.shape[0]
        cache = reserved_cache(model.config, virtual + max(len(r) for r in rows) + room)
        # an empty row has no node of its own in a trie: such a batch keeps the padded prefill
        if (share_prefix and not all_logits and n > 1 and all(rows) and _growing(cache) and not virtual
                and tree_prefill_ok(model)):
            mask, next_pos, logits = tree_prefill(model, rows, cache, room, logits_at)
            return cls(model, cache, mask, next_pos, *_left_padding(rows, mask.shape[1])), logits
        # a sliding window counts cache slots, and the padding between a shared prefix and a shorter row's
        # own tokens would take slots of its window: such models prefill every row whole
        shared = shared_prefix_length(rows) if share_prefix and not all_logits and _growing(cache) else 0
        width = max(len(r) for r in rows) - shared
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            own = len(r) - shared
            input_ids[i, width - own:] = torch.tensor(r[shared:], dtype=torch.long)
            mask[i, width - own:] = 1
        input_ids, mask = to_device(input_ids, device), to_device(mask, device)
        pads = [width - len(r) + shared for r in rows]
        lead = virtual + shared  # cache columns every row shares
        first = [0] * n if lead else list(pads)
        if lead:
            head = to_device(torch.tensor([rows[0][:shared]], dtype=torch.long), device)
            if virtual:
                forward(peft_inner_model(model), **prefixed_inputs(model, prompts, head), past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
            else:
                forward(model, input_ids=head, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(n)
            mask = torch.cat([mask.new_ones(n, lead), mask], dim=-1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, lead:]
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                      use_cache=True)
        if all_logits:
            logits = forward(model, **kwargs).logits
        else:
            logits = last_logits(model, **kwargs)
        return cls(model, cache, mask, position_ids[:, -1:] + 1, first, pads), logits

    def step(self, tokens):
        """Feed one token per row (a (n,) tensor on the device); returns the next logits, (n, vocab) float32."""
        import torch
        if self._width == self._mask_buffer.shape[1]:  # room for the next 64 tokens at least, ones already
            spare = self._mask_buffer.new_ones(len(self), max(64, self._width // 2))
            self._mask_buffer = torch.cat([self._mask_buffer, spare], dim=-1)
        self._width += 1
        logits = last_logits(self.model, input_ids=tokens[:, None], attention_mask=self._step_mask(),
                              position_ids=self.next_pos, past_key_values=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        return logits

    def _step_mask(self):
        """The attention mask a decode step passes. Given a 2-D mask, transformers' SDPA path asks the device
        whether it holds any padding, to leave the mask out if not (`masking_utils._ignore_causal_mask_sdpa`): a
        host sync every step. The host knows: no mask without padding, else the boolean (n, 1, 1, width) mask
        transformers builds from the 2-D one (a row's one query sees each cached column that is not padding).
        Other attention implementations, and caches with sliding-window layers (whose masks differ by layer),
        get the 2-D mask."""
        if getattr(self.model.config, "_attn_implementation", None) != "sdpa" or not self.mergeable:
            return self.mask.contiguous()
        return self.mask.bool()[:, None, None, :] if any(self.pads) else None

    def score(self, tokens, token_mask):
        """Feed right-padded tokens (n, w) after each row (`token_mask` marks the real ones) and return the
        float32 logits at the real positions, flattened row-major. The batch is not usable afterwards."""
        import torch
        w = tokens.shape[1]
        positions = self.mask.sum(-1, keepdim=True) + torch.arange(w, device=self.device)[None, :]
        return logits_at(self.model, tokens, torch.cat([self.mask, token_mask], dim=-1), token_mask.bool(),
                         position_ids=positions, past_key_values=self.cache, use_cache=True)

    def select(self, rows: list[int]) -> None:
        """Keep the rows at `rows`, in that order; a row may come several times (a context once per continuation)."""
        import torch
        index = to_device(torch.tensor(rows, dtype=torch.long), self.device)
        self.cache.batch_select_indices(index)
        self._mask_buffer, self.next_pos = self._mask_buffer[index], self.next_pos[index]
        self.first, self.pads = [self.first[i] for i in rows], [self.pads[i] for i in rows]

    def remove(self, rows: list[int], carried=None):
        """Drop the rows at `rows`: rows from the end of the batch move into their places, so only the rows that
        move are copied, and the order changes. Returns the new order (the old index of each row now in the
        batch) and `carried`, a per-row tensor the caller keeps (the next tokens), moved alike."""
        import torch

        from tunelab.decoding.kv_cache import ReservedLayer
        gone = set(rows)
        n, kept = len(self), len(self) - len(gone)
        order = list(range(kept))
        for hole, row in zip([i for i in range(kept) if i in gone], [j for j in range(kept, n) if j not in gone]):
            order[hole] = row
        for layer in self.cache.layers:
            if type(layer) is ReservedLayer:
                layer.keep_rows(order)
            else:
                layer.batch_select_indices(to_device(torch.tensor(order, dtype=torch.long), self.device))
        self._mask_buffer, self.next_pos = _moved(self._mask_buffer, order), _moved(self.next_pos, order)
        self.first, self.pads = [self.first[j] for j in order], [self.pads[j] for j in order]
        return order, (None if carried is None else _moved(carried, order))

    @property
    def mergeable(self) -> bool:
        """Whether other rows can join mid-flight: every cache layer is a plain growing one (a sliding-window
        layer keeps a fixed window per row and cannot be left-padded to another batch's length)."""
        return _growing(self.cache)

    def reserve(self, rows: int) -> None:
        """Make room in the cache for `rows` rows, so that rows joining later (`extend`) are written into free
        ones instead of moving these."""
        from tunelab.decoding.kv_cache import ReservedLayer
        for layer in self.cache.layers:
            if type(layer) is ReservedLayer:
                layer.reserve(rows)

    def extend(self, other: "DecodeBatch") -> None:
        """Append `other`'s rows, left-padding the narrower of the two to the wider. Their cache rows are written
        into this cache's free rows (`ReservedLayer.append_rows`), without copying the rows already here."""
        import torch
        import torch.nn.functional as F
        mine, theirs = self.mask.shape[1], other.mask.shape[1]
        width = max(mine, theirs)

        def lpad(t, dim_from_end):
            missing = width - t.shape[-dim_from_end]
            return t if missing == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

        from tunelab.decoding.kv_cache import ReservedLayer
        for layer, joining in zip(self.cache.layers, other.cache.layers):
            if type(layer) is ReservedLayer and type(joining) is ReservedLayer:
                layer.append_rows(joining, width)
                continue
            layer.keys = torch.cat([lpad(layer.keys, 2), lpad(joining.keys, 2)], dim=0)
            layer.values = torch.cat([lpad(layer.values, 2), lpad(joining.values, 2)], dim=0)
        self.mask = torch.cat([lpad(self.mask, 1), lpad(other.mask, 1)], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos], dim=0)
        self.first = [f + width - mine for f in self.first] + [f + width - theirs for f in other.first]
        self.pads = [p + width - mine for p in self.pads] + [p + width - theirs for p in other.pads]

    def trim(self) -> None:
        """Drop leading cache columns that are padding in every row (left by rows that have gone): as many as the
        host's record of each row's first column allows."""
        if not self.mergeable or not self.first:
            return
        first = min(self.first)
        if first > 0:
            for layer in self.cache.layers:
                layer.crop_front(first)
            self._mask_buffer, self._width = self._mask_buffer[:, first:], self._width - first
            self.first = [f - first for f in self.first]
            self.pads = [p - first for p in self.pads]
