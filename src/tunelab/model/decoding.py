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
            tree = DecodeBatch(model, cache, mask, next_pos)
            tokens = want.argmax(-1).to(device)
            pairs = [(want, got), (padded.step(tokens), tree.step(tokens))]
    except Exception:  # an architecture the trie cannot drive keeps the padded prefill
        return False
    return all(w.shape == t.shape and bool((w - t).abs().max() <= tol * w.abs().max().clamp(min=1))
               for w, t in pairs)


class DecodeBatch:
    """Rows of different lengths decoding together, left-padded: a KV cache written in place
    (`kv_cache.ReservedLayer`), the attention mask over the cached positions, and each row's next position.

    `prefill` starts a batch, `step` feeds one token per row, `select` drops rows, `extend` takes in the
    rows of another batch (the server's continuous batching), `trim` drops cache columns no row uses."""

    def __init__(self, model, cache, mask, next_pos):
        self.model, self.cache, self.mask, self.next_pos = model, cache, mask, next_pos

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
        the (prefix-free) input, (n, width, vocab), for prompt log-probabilities."""
        import torch

        from tunelab.model.kv_cache import reserved_cache
        from tunelab.model.tree_prefill import tree_prefill

        device = next(model.parameters()).device
        n = len(rows)
        cache = reserved_cache(model.config, max(len(r) for r in rows) + room)
        # an empty row has no node of its own in a trie: such a batch keeps the padded prefill
        if share_prefix and not all_logits and n > 1 and all(rows) and _growing(cache) and tree_prefill_ok(model):
            mask, next_pos, logits = tree_prefill(model, rows, cache, room, logits_at)
            return cls(model, cache, mask, next_pos), logits
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
        input_ids, mask = input_ids.to(device), mask.to(device)
        if shared:
            _forward(model, input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=cache,
                     use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(n)
            mask = torch.cat([mask.new_ones(n, shared), mask], dim=-1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                      use_cache=True)
        if all_logits:
            logits = _forward(model, **kwargs).logits.float()
        else:
            logits = _last_logits(model, **kwargs)
        return cls(model, cache, mask, position_ids[:, -1:] + 1), logits

    def step(self, tokens):
        """Feed one token per row (a (n,) tensor); returns the next logits, (n, vocab) float32."""
        import torch
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=-1)
        logits = _last_logits(self.model, input_ids=tokens[:, None], attention_mask=self.mask,
                              position_ids=self.next_pos, past_key_values=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        return logits

    def score(self, tokens, token_mask):
        """Feed right-padded tokens (n, w) after each row (`token_mask` marks the real ones) and return the
        float32 logits at the real positions, flattened row-major. The batch is not usable afterwards."""
        import torch
        w = tokens.shape[1]
        positions = self.mask.sum(-1, keepdim=True) + torch.arange(w, device=self.device)[None, :]
        return logits_at(self.model, tokens, torch.cat([self.mask, token_mask], dim=-1), token_mask.bool(),
                         position_ids=positions, past_key_values=self.cache, use_cache=True)

    def select(self, idx) -> None:
        """Keep the rows at `idx` (a tensor of row indices), in that order."""
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]

    @property
    def mergeable(self) -> bool:
        """Whether other rows can join mid-flight: every cache layer is a plain growing one (a sliding-window
        layer keeps a fixed window per row and cannot be left-padded to another batch's length)."""
        return _growing(self.cache)

    def extend(self, other: "DecodeBatch") -> None:
        """Append `other`'s rows, left-padding the shorter cache and mask to the longer one."""
        import torch
        import torch.nn.functional as F
        width = max(self.mask.shape[1], other.mask.shape[1])

        def lpad(t, dim_from_end):
            missing = width - t.shape[-dim_from_end]
            return t if missing == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

        from tunelab.model.kv_cache import ReservedLayer
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            if type(mine) is ReservedLayer and type(theirs) is ReservedLayer:
                mine.append_rows(theirs, width)
                continue
            mine.keys = torch.cat([lpad(mine.keys, 2), lpad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([lpad(mine.values, 2), lpad(theirs.values, 2)], dim=0)
        self.mask = torch.cat([lpad(self.mask, 1), lpad(other.mask, 1)], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos], dim=0)

    def trim(self) -> None:
        """Drop leading cache columns that are padding in every row (left by rows that have gone)."""
        if not self.mergeable:
            return
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        if first > 0:
            for layer in self.cache.layers:
                layer.crop_front(first)
            self.mask = self.mask[:, first:]



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


def sample_tokens(logits, params: list[SamplingParams], generators: list) -> list[int]:
    """One token per row of (n, vocab) logits: the argmax for a greedy row, else a draw from the row's
    temperature / top-k / top-p distribution with the row's own `torch.Generator` (so a seed reproduces a
    completion whatever shares the batch). A NaN logit is never chosen."""
    import torch
    if torch.isnan(logits).any():
        logits = torch.nan_to_num(logits, nan=float("-inf"))
    tokens = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if not p.greedy:
            tokens[i] = _sample_row(logits[i], p, generators[i])
    return tokens


def _sample_row(row, p: SamplingParams, generator) -> int:
    """Numerically safe at any temperature: logits are shifted so their maximum is 0 before the division
    (a temperature of 1e-30 gives 0 and -inf, never inf - inf), in float64."""
    import torch
    x = row.double()
    top = x.max()
    if torch.isinf(top):  # +inf logits share the probability; all -inf (nothing allowed): the argmax
        if top < 0:
            return int(row.argmax())
        x = torch.where(x == top, 0.0, float("-inf"))
    else:
        x = (x - top) / p.temperature
    if 0 < p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs > p.top_p     # keep the smallest prefix reaching top_p (at least one)
        x[order[drop]] = float("-inf")
    probs = x.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


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
                on_done=None) -> tuple[list[list[int]], list[bool]]:
    """Greedy continuation of every row of token ids, `batch_size` rows decoding at a time: (the new ids of
    each row, its stop token excluded; whether each row stopped by itself rather than at `max_new_tokens`).

    A row is done when it emits a stop token or, with `streams`, when its text reaches a stop string, and
    waiting rows take the freed places (continuous batching, as the server does): once half the batch is
    done, the done rows leave together (one copy of the cache instead of one per finishing step; until
    then they ride along, fed padding) and the next rows are prefilled together and merged in, so decode
    steps keep running on a full batch instead of on the few long answers of a batch. `on_done(k)` is told
    each time k rows have finished. Rows are taken in the order given (sort them by length: less padding)."""
    import torch

    n = len(rows) if max_new_tokens > 0 else 0
    results: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    waiting = 0                                 # next row to admit
    active: list[int | None] = []               # row of each batch row; None once it is done
    live = 0                                    # rows of the batch not done
    batch = logits = None
    while waiting < n or live:
        done = len(active) - live
        if done and done * 2 >= max(len(active), batch_size if waiting < n else 0):
            keep = [j for j, row in enumerate(active) if row is not None]
            index = torch.tensor(keep, device=batch.device)
            batch.select(index)
            batch.trim()
            logits = logits[index]
            active = [active[j] for j in keep]
        room = batch_size - len(active)
        if waiting < n and (not active or (room * 2 >= batch_size and batch.mergeable)):
            take = list(range(waiting, min(n, waiting + room)))
            waiting = take[-1] + 1
            new, new_logits = DecodeBatch.prefill(model, [rows[i] for i in take], pad_id, max_new_tokens)
            if batch is None:
                batch, logits = new, new_logits
            else:
                batch.extend(new)
                logits = torch.cat([logits, new_logits])
            active += take
            live += len(take)
        tokens = logits.argmax(-1).tolist()
        finished = 0
        for j, (row, tok) in enumerate(zip(active, tokens)):
            if row is None:
                tokens[j] = pad_id
                continue
            if tok in stops:
                stopped[row] = True
            else:
                results[row].append(tok)
                if streams is not None and streams[row].add(tok):
                    stopped[row] = True
                elif len(results[row]) < max_new_tokens:
                    continue
            active[j] = None
            tokens[j] = pad_id
            finished += 1
        live -= finished
        if finished and on_done is not None:
            on_done(finished)
        if not live:
            batch, active = None, []
            continue
        logits = batch.step(torch.tensor(tokens, device=batch.device))
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
