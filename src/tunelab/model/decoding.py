"""Where generation happens: the one decoding core under evaluation, log-likelihood scoring, perplexity
and the server.

What a model's outputs mean is decided here once, so `tunelab eval`, `tunelab serve` and the arena give the
same tokens for the same checkpoint:

- which tokens end an answer (`stop_token_ids`): the tokenizer's EOS, every id in the model's
  `generation_config.eos_token_id`, and the end-of-turn token of the tokenizer's chat template
  (Llama-3's `<|eot_id|>`, Qwen's `<|im_end|>`, Gemma's `<end_of_turn>`), which is not always EOS;
- which id pads a batch (`pad_token_id`) and how long the context is (`context_length`).

Every forward pass computes rotary embeddings without copies where that gives transformers' result exactly
(`rotary.py`), and a batch's prefill runs the prefixes its rows share once, as a packed trie, where a check
finds that gives the padded prefill's logits (`tree_prefill.py`).

Shaped for a GPU: a decode step makes the host wait for the device once — for the few numbers it needs (the next
tokens, and the log-probabilities a request asked for), copied together — and everything else stays on the
device: sampling, the next step's input, each row's position. The host keeps the batch's layout (which columns
are padding) itself instead of reading it back from the mask, rows join and leave the KV cache without copying
the rows that stay (`kv_cache.py`), and log-probabilities are taken a chunk of positions at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

# an assistant message this unlikely to merge with the text a chat template puts after it
_SENTINEL = "\u2063tunelab\u2063answer\u2063"


def end_of_turn_id(tokenizer) -> int | None:
    """The special token a chat template puts right after an assistant's message, if it puts one.

    Found by rendering a one-turn conversation whose answer is a sentinel and reading the first
    non-blank token after it; None without a chat template, when the template fails to render, or when no
    special token follows the answer (a continuation template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:  # noqa: BLE001 - any template error means "no end-of-turn token known"
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    after = text.rsplit(_SENTINEL, 1)[1]
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
                   if getattr(tok, "special", False))
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return int(token)
        if tokenizer.decode([token]).strip():
            return None
    return None


def stop_token_ids(model, tokenizer) -> frozenset[int]:
    """Token ids that end a generated answer: tokenizer EOS ∪ generation_config.eos_token_id ∪ the chat
    template's end-of-turn token."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    turn = end_of_turn_id(tokenizer)
    if turn is not None:
        ids.add(turn)
    return frozenset(ids)


def pad_token_id(tokenizer, stops=()) -> int:
    """The id that fills left padding: the tokenizer's pad token, else its EOS, else a stop id, else 0.
    (Padded positions are masked out, so any id is correct; a real one keeps embeddings in range.)"""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, *sorted(stops)):
        if candidate is not None:
            return int(candidate)
    return 0


def context_length(model, tokenizer=None) -> int:
    """The model's context in tokens: config.max_position_embeddings (or GPT-2's n_positions), capped by a
    sane tokenizer.model_max_length; 2048 when neither says."""
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        n = min(n, tok_max)
    return int(n)


# --- the forward pass: logits where they are needed ----------------------------------------------------

def logits_at(model, input_ids, attention_mask, keep, **kwargs):
    """Float32 logits at the `keep` positions (bool, batch × seq), flattened row-major to (keep.sum(), vocab).

    transformers computes the vocabulary projection only there (`logits_to_keep`); a model class without
    that argument, or one that ignores it, is run on every position and the kept ones are selected."""
    try:
        logits = _forward(model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                          **kwargs).logits
    except TypeError:  # a model class without logits_to_keep
        logits = _forward(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    if logits.ndim == 3:
        logits = logits[keep] if logits.shape[1] == keep.shape[1] else logits.reshape(-1, logits.shape[-1])
    return logits.float()


def _forward(model, **kwargs):
    """`model(**kwargs)`, with rotary embeddings computed without copies where that is exact (`rotary.py`)."""
    from tunelab.model.rotary import fast_rotary
    with fast_rotary(model):
        return model(**kwargs)


def _last_logits(model, **kwargs):
    """Float32 logits of each row's last position, (batch, vocab)."""
    try:
        logits = _forward(model, logits_to_keep=1, **kwargs).logits
    except TypeError:
        logits = _forward(model, **kwargs).logits
    return logits[:, -1, :].float()


# --- a batch of rows decoding together ----------------------------------------------------------------

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
    from tunelab.model.kv_cache import ReservedLayer
    return all(type(layer) is ReservedLayer for layer in cache.layers)


_tree_verified: dict[tuple, bool] = {}    # (model class, model type, attention, dtype) -> tree prefill allowed


def tree_prefill_ok(model) -> bool:
    """Whether `DecodeBatch.prefill` may run `model`'s rows as a trie (`tree_prefill.py`): its attention
    implementation is one that module can call, and on random rows (shared prefixes, a duplicate, a row that is
    another's prefix, one alone) the trie gives the padded prefill's logits and, after one decode step, the same
    logits again. Checked once per model class and architecture, attention implementation and dtype."""
    from tunelab.model.tree_prefill import SUPPORTED
    own = getattr(model.config, "_attn_implementation", None)
    # the architecture too: a peft wrapper's class is the same whatever model it wraps
    key = (type(model), getattr(model.config, "model_type", None), own, model.dtype)
    if key not in _tree_verified:
        _tree_verified[key] = own in SUPPORTED and _tree_agrees(model)
    return _tree_verified[key]


def _tree_agrees(model) -> bool:
    import torch

    from tunelab.model.kv_cache import reserved_cache
    from tunelab.model.tree_prefill import tree_prefill

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


def to_device(tensor, device):
    """A host tensor on `device` without the host waiting for the device: on CUDA through pinned memory and an
    asynchronous copy (a copy from pageable memory waits for the stream first); elsewhere `tensor.to(device)`."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


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

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def device(self):
        return self.mask.device

    @classmethod
    def prefill(cls, model, rows: list[list[int]], pad_id: int, room: int, share_prefix: bool = True,
                all_logits: bool = False):
        """Run token rows into a fresh cache with `room` positions to spare; returns (batch, logits).

        With `share_prefix`, prefixes the rows share run once: as a trie with no padding (`tree_prefill.py`)
        where that is allowed, else the prefix common to all rows (a template header), whose cache is copied
        to every row, with pads between it and each row's own tokens. The logits are each row's
        last position's, (n, vocab) float32 — or with `all_logits`, the model's logits at every position of
        the (prefix-free) input, (n, width, vocab) in the model's dtype, for prompt log-probabilities
        (`token_logprobs` takes them a chunk of positions at a time)."""
        import torch

        from tunelab.model.kv_cache import reserved_cache
        from tunelab.model.tree_prefill import tree_prefill

        device = next(model.parameters()).device
        n = len(rows)
        cache = reserved_cache(model.config, max(len(r) for r in rows) + room)
        # an empty row has no node of its own in a trie: such a batch keeps the padded prefill
        if share_prefix and not all_logits and n > 1 and all(rows) and _growing(cache) and tree_prefill_ok(model):
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
        first = [0] * n if shared else list(pads)
        if shared:
            _forward(model, input_ids=to_device(torch.tensor([rows[0][:shared]]), device), past_key_values=cache,
                     use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(n)
            mask = torch.cat([mask.new_ones(n, shared), mask], dim=-1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                      use_cache=True)
        if all_logits:
            logits = _forward(model, **kwargs).logits
        else:
            logits = _last_logits(model, **kwargs)
        return cls(model, cache, mask, position_ids[:, -1:] + 1, first, pads), logits

    def step(self, tokens):
        """Feed one token per row (a (n,) tensor on the device); returns the next logits, (n, vocab) float32."""
        import torch
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=-1)
        logits = _last_logits(self.model, input_ids=tokens[:, None], attention_mask=self._step_mask(),
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
            return self.mask
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
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        self.first, self.pads = [self.first[i] for i in rows], [self.pads[i] for i in rows]

    def remove(self, rows: list[int], carried=None):
        """Drop the rows at `rows`: rows from the end of the batch move into their places, so only the rows that
        move are copied, and the order changes. Returns the new order (the old index of each row now in the
        batch) and `carried`, a per-row tensor the caller keeps (the next tokens), moved alike."""
        import torch

        from tunelab.model.kv_cache import ReservedLayer
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
        self.mask, self.next_pos = _moved(self.mask, order), _moved(self.next_pos, order)
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
        from tunelab.model.kv_cache import ReservedLayer
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

        from tunelab.model.kv_cache import ReservedLayer
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
            self.mask = self.mask[:, first:]
            self.first = [f - first for f in self.first]
            self.pads = [p - first for p in self.pads]


# --- choosing the next token --------------------------------------------------------------------------

GREEDY_TEMPERATURE = 1e-5     # temperatures below this (and NaN) decode greedily


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: no top-k filter
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None         # alternatives per generated token (None: no logprobs)
    prompt_logprobs: int | None = None  # alternatives per prompt token (for echo; None: none)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0 (or below GREEDY_TEMPERATURE, where a draw is all but certain to be
        the argmax and dividing by it only courts overflow), or top-k 1."""
        return not self.temperature >= GREEDY_TEMPERATURE or self.top_k == 1


def sample_next(logits, params: list[SamplingParams], generators: list):
    """One token per row of (n, vocab) logits, left on their device: the argmax for a greedy row, else a draw
    from the row's temperature / top-k / top-p distribution with the row's own `torch.Generator` (so a seed
    reproduces a completion whatever shares the batch). A NaN logit counts as -inf, never chosen. The rows are
    filtered together; only the noise of the draw is made row by row, from each row's generator."""
    import torch
    logits = logits.masked_fill(logits.isnan(), float("-inf"))
    tokens = logits.argmax(-1)
    drawn = [i for i, p in enumerate(params) if not p.greedy]
    if not drawn:
        return tokens
    if len(drawn) == len(params):
        return _draw(logits, tokens, params, generators)
    index = to_device(torch.tensor(drawn, dtype=torch.long), logits.device)
    draws = _draw(logits.index_select(0, index), tokens.index_select(0, index), [params[i] for i in drawn],
                  [generators[i] for i in drawn])
    return tokens.index_copy(0, index, draws)


def sample_tokens(logits, params: list[SamplingParams], generators: list) -> list[int]:
    """`sample_next`'s tokens on the host."""
    return sample_next(logits, params, generators).tolist()


def _draw_dtype(device):
    """The precision of a draw: float64 on a CPU, where tunelab has always drawn in float64 (so a seed gives the
    tokens it gave before), float32 elsewhere (float64 is slow on most GPUs, and a seeded draw there comes from
    a generator on the device: repeatable, not the CPU's tokens)."""
    import torch
    return torch.float64 if device.type == "cpu" else torch.float32


def _draw(rows, argmax, params: list[SamplingParams], generators: list):
    """A token per row drawn from its filtered distribution: `torch.multinomial`'s own method, the argmax of the
    probabilities over Exp(1) noise, with the noise from the row's generator (equal to multinomial draw for draw).

    Numerically safe at any temperature: logits are shifted so their maximum is 0 before the division (a
    temperature of 1e-30 gives 0 and -inf, never inf - inf). A row with +inf logits (an overflowed half-precision
    model) draws among those alone; a row with nothing allowed (all -inf) takes `argmax`, its noise made all the
    same (which rows those are is only known on the device)."""
    import torch
    device, vocab = rows.device, rows.shape[-1]
    dtype = _draw_dtype(device)

    def per_row(values, kind=dtype):
        return to_device(torch.tensor(values, dtype=kind), device)[:, None]

    x = rows.to(dtype)
    top = x.amax(-1, keepdim=True)
    nothing = top == float("-inf")
    scaled = ((x - top) / per_row([p.temperature for p in params])).masked_fill(nothing, 0.0)
    x = torch.where(top == float("inf"), torch.where(x == top, 0.0, float("-inf")).to(dtype), scaled)
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        kth = x.topk(max(ks), dim=-1).values.gather(1, per_row([max(k - 1, 0) for k in ks], torch.long))
        x = x.masked_fill((per_row(ks, torch.long) > 0) & (x < kth), float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = per_row([p.top_p for p in params])
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        drop = (probs.cumsum(-1) - probs > top_p) & (top_p < 1.0)  # keep the smallest prefix reaching top_p
        x = x.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = x.softmax(-1)
    noise = torch.empty_like(probs)
    for row, generator in zip(noise, generators):
        row.exponential_(generator=generator)
    return torch.where(nothing[:, 0], argmax, (probs / noise).argmax(-1))


def token_logprobs(logits, targets, top: int = 0):
    """Log-probabilities of `targets` (m,) under the rows of `logits` (m, vocab): (each target's log-probability
    (m,) float32, whether it is the row's argmax (m,) bool, the `top` largest log-probabilities (m, top) float32
    and their token ids (m, top)), on the logits' device.

    The log-softmax runs on ~8 MB of float32 at a time, from logits kept in their own dtype, as the training loss
    does (`train/loss.py`): a prompt's log-probabilities never hold its (positions x vocabulary) logits in
    float32, nor their log-softmax. Row for row the same numbers as one float32 log-softmax over all of them."""
    import torch
    m, vocab = logits.shape
    chunk = max(1, 2 ** 21 // vocab)
    parts = []
    for lo in range(0, m, chunk):
        logp = torch.log_softmax(logits[lo:lo + chunk].float(), dim=-1)
        target = targets[lo:lo + chunk, None]
        values, ids = logp.topk(top, dim=-1) if top else (logp[:, :0], target[:, :0])
        parts.append((logp.gather(1, target)[:, 0], logp.argmax(-1) == target[:, 0], values, ids))
    return tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))


# --- from tokens to text ------------------------------------------------------------------------------

class TextStream:
    """One row's generated text, decoded as tokens arrive and cut at the first stop string.

    Only a short window is decoded per token (as vLLM does): the text of tokens [prefix:] minus the text
    of [prefix:read], so a tokenizer that drops a leading space on the first token, or a character split
    over several byte tokens, still comes out right. An incomplete UTF-8 character waits for its next byte
    token unless the stream is final."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False       # a stop string was found; text ends before it
        self._prefix = self._read = 0

    def add(self, token: int | None, final: bool = False) -> bool:
        """Take one generated token (None: no new token, e.g. the row ended on a stop token); returns
        True once a stop string has ended the text (later tokens are ignored)."""
        if self.stopped:
            return True
        if token is not None:
            self.ids.append(token)
        before = len(self.text)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        new = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(new) > len(prefix) and (final or not new.endswith("\ufffd")):
            self.text += new[len(prefix):]
            self._prefix, self._read = self._read, len(self.ids)
        if self.stop and not self.stopped and len(self.text) > before:
            hits = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
        return self.stopped

    def safe_length(self, shown: int = 0) -> int:
        """How much of the text can be shown now: all but a tail (after `shown`) that may be the start of
        a stop string."""
        hold = 0
        if not self.stopped:
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text) - shown), hold, -1):
                    if self.text.endswith(s[:k]):
                        hold = k
                        break
        return len(self.text) - hold


# --- batched greedy generation: the evaluation engine -------------------------------------------------

def greedy_rows(model, rows: list[list[int]], max_new_tokens: int, stops: frozenset[int], pad_id: int,
                batch_size: int, streams: list[TextStream] | None = None,
                on_done=None, sampling: list[SamplingParams] | None = None,
                generators: list | None = None, keep_stop: bool = False) -> tuple[list[list[int]], list[bool]]:
    """Greedy continuation of every row of token ids, `batch_size` rows decoding at a time: (the new ids of
    each row, its stop token excluded; whether each row stopped by itself rather than at `max_new_tokens`).
    With `sampling` (a SamplingParams a row) and `generators` (a `torch.Generator` a row), each row draws its
    tokens instead (`sample_next`): a row's draws come from its own generator, so a seeded row gives the same
    completion whichever rows share its batch (the rollouts of reinforcement learning, `-n N` samples).
    `keep_stop`: a row that stopped at a stop token keeps it as its last id (what a policy is trained to emit).

    A row is done when it emits a stop token or, with `streams`, when its text reaches a stop string. It leaves
    the batch at once (the last row moves into its place: a copy of that row's cache, not of the batch's), and
    once half the batch is free the waiting rows are prefilled together and merged in (continuous batching, as
    the server does), so decode steps run on the rows still answering, and prefills on many rows at a time.
    `on_done(k)` is told each time k rows have finished. Rows are taken in the order given (sort them by length:
    less padding).

    A decode step copies one thing to the host, the batch's next tokens; the next step's input is those tokens
    on the device."""
    import torch

    n = len(rows) if max_new_tokens > 0 else 0
    if sampling is not None and (len(sampling) != len(rows) or generators is None or len(generators) != len(rows)):
        raise ValueError("sampling needs one SamplingParams and one generator a row")

    def choose(logits, rows_of_batch: list[int]):
        if sampling is None:
            return logits.argmax(-1)
        return sample_next(logits, [sampling[r] for r in rows_of_batch], [generators[r] for r in rows_of_batch])

    results: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    waiting = 0                                 # next row to admit
    active: list[int] = []                      # row of each batch row
    batch = tokens = None                       # tokens: each batch row's next token, on the device
    while waiting < n or active:
        room = batch_size - len(active)
        if waiting < n and (not active or (room * 2 >= batch_size and batch.mergeable)):
            take = list(range(waiting, min(n, waiting + room)))
            waiting = take[-1] + 1
            new, new_logits = DecodeBatch.prefill(model, [rows[i] for i in take], pad_id, max_new_tokens)
            if batch is None:
                batch, tokens = new, choose(new_logits, take)
            else:
                batch.extend(new)
                tokens = torch.cat([tokens, choose(new_logits, take)])
            active += take
        done = []
        for j, (row, tok) in enumerate(zip(active, tokens.tolist())):
            if tok in stops:
                stopped[row] = True
                if keep_stop:
                    results[row].append(tok)
            else:
                results[row].append(tok)
                if streams is not None and streams[row].add(tok):
                    stopped[row] = True
                elif len(results[row]) < max_new_tokens:
                    continue
            done.append(j)
        if done and on_done is not None:
            on_done(len(done))
        if len(done) == len(active):
            batch, tokens, active = None, None, []
            continue
        if done:
            order, tokens = batch.remove(done, tokens)
            active = [active[j] for j in order]
            batch.trim()
        tokens = choose(batch.step(tokens), active)
    return results, stopped


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop": a stop token or stop string ended it; "length": it reached max_new_tokens


def generate_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate", stop: tuple[str, ...] = ()) -> list[str]:
    """Greedy completions of `prompts` in input order (their texts; see `complete_batched`)."""
    return [c.text for c in complete_batched(model, tokenizer, prompts, max_new_tokens, batch_size, progress, desc,
                                             stop)]


def complete_batched(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
                     progress: bool = True, desc: str = "generate", stop: tuple[str, ...] = ()) -> list[Completion]:
    """Greedy completions of `prompts` in input order, special tokens stripped, each ending before its
    first stop token (`stop_token_ids`) or stop string, with why it ended (a stop rate counts "stop").

    Prompts are tokenised once without special tokens (as tunelab trains), sorted by length and
    left-padded into batches; the shared template header of the rows prefilled together is run once
    (`DecodeBatch.prefill`), the cache is written in place, finished rows leave the batch and waiting
    prompts take their places (`greedy_rows`): faster than `model.generate` on length-sorted left-padded
    batches (benchmarks/bench_eval.py)."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    stops = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, stops)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    with torch.inference_mode(), tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt",
                                      leave=False) as bar:
        streams = [TextStream(tokenizer, stop) for _ in order] if stop else None
        new, stopped = greedy_rows(model, [encoded[i] for i in order], max_new_tokens, stops, pad_id, batch_size,
                                   streams, on_done=bar.update)
    if streams:
        for s in streams:
            s.add(None, final=True)
        texts = [s.text for s in streams]
    else:
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    outputs: list[Completion] = [Completion("", "length")] * len(prompts)
    for i, text, done in zip(order, texts, stopped):
        outputs[i] = Completion(text, "stop" if done else "length")
    return outputs
