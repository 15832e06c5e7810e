"""The serving engine: continuous batching over one KV cache.

One scheduler thread owns the model. Requests become `Sequence`s in a pending queue; on each turn the
scheduler admits waiting sequences (one left-padded prefill for the newcomers), merges their KV cache rows into
the running batch, then decodes one token for *every* active sequence in a single forward pass. Sequences that
finish (EOS, stop string, max_tokens, context end) or whose client went away leave the batch at once: the last
rows move into their cache rows, so a slot frees up for the next request without copying the rows that stay, and
newcomers are written into free rows of a cache reserved for `max_batch` rows. Positions are tracked per row, so
rows of different lengths share the batch through left padding. The tensor work (prefill, step, merge, sampling, stop
tokens, detokenization and stop strings) is the decoding core's, `tunelab.decoding`, the same code the
evaluation engine runs, so a checkpoint answers the same through `tunelab eval` and `tunelab serve`.

Sampling is per row: greedy at temperature 0 (or below 1e-5), else temperature / top-k / top-p with a
`torch.Generator` of the sequence's own on the model's device, so a `seed` reproduces a completion whatever else
shares the batch (up to float rounding of a batched matmul). Log-probabilities are those of the raw model
distribution. A decode step waits for the device once: the sampled tokens, and the log-probabilities requests
asked for, come to the host in one copy; the next step's input stays on the device.

Isolation: a failure that belongs to one sequence ends only that sequence, with finish_reason "error" (a row's
setup, e.g. its generator's seed; its sampling; taking its token). A prefill that fails for a group of newcomers
is retried row by row, so only the row that cannot be prefilled fails. Only a failure of the shared decode step
itself (the forward pass over the whole batch) ends every running sequence. Error texts given to clients name
no internals; the log has the traceback. `Engine.fault_hook` lets tests make chosen rows fail at each stage.

Consumers receive `Output` events through a callback (called on the scheduler thread: it must be quick);
`Engine.stream()` wraps that as a blocking iterator for synchronous callers (the web UI, benchmarks).

The scheduler thread is its owner's to start and stop: `start()` (or `with Engine(...) as engine`) starts it, and
`close()` (or the `with` block's end) ends it, the sequences still waiting or running finished as aborted. An engine
not started serves nothing (`submit` refuses); nothing is registered to run at exit, so an owner closes what it
started (`ServedModel.close`, which `tunelab serve`, `ui` and `generate` call however they end).
"""

from __future__ import annotations

import copy
import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tunelab.decoding.running import RunningRows
from tunelab.decoding.sampling import SamplingParams
from tunelab.decoding.text_stream import TextStream

__all__ = ["Engine", "Output", "SamplingParams", "Sequence", "TokenLogprob"]

log = logging.getLogger("tunelab.serve")

MAX_LOGPROBS = 20
ROW_ERROR = "generation failed for this request (the server log has the details)"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None               # None for the first prompt token (nothing predicts it)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Output:
    """One event of one sequence: new text and tokens since the last event; `finish_reason` on the last."""
    seq: "Sequence"
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None    # stop | length | abort | error
    error: str | None = None


_seq_ids = itertools.count()


class Sequence:
    """One generated continuation of one prompt. Created by the caller, filled in by the engine thread."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Output], None],
                 index: int = 0):
        self.id = next(_seq_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.on_event = on_event
        self.index = index
        self.num_generated = 0              # sampled tokens, EOS included (usage counts)
        self.stream: TextStream | None = None   # created on the engine thread with its tokenizer
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.finish_reason: str | None = None
        self.cancelled = False
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._emitted = 0                   # characters of self.text already sent
        self._pending_tokens: list[int] = []
        self._pending_logprobs: list[TokenLogprob] = []
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self._seed = seed
        self.generator = None               # created on the engine thread (torch imported there)

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    @property
    def output_ids(self) -> list[int]:
        """Generated tokens, stop token excluded."""
        return self.stream.ids if self.stream is not None else []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to drop this sequence (client gone); safe from any thread, idempotent."""
        self.cancelled = True

    # engine-thread side ----------------------------------------------------------------------------
    def _emit(self, out: Output) -> None:
        try:
            self.on_event(out)
        except Exception:  # a consumer's bug must not stop the engine
            log.exception("event callback failed")

    def _finish(self, reason: str, error: str | None = None) -> None:
        if self.finished:
            return
        self.finish_reason = reason
        out = Output(self, self.text[self._emitted:], self._pending_tokens, self._pending_logprobs, reason, error)
        self._emitted = len(self.text)
        self._pending_tokens, self._pending_logprobs = [], []
        self._emit(out)

    def _append(self, token: int, lp: TokenLogprob | None, engine: "Engine") -> None:
        """Take one sampled token: update text, check stop conditions, emit what is safe to show."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.num_generated += 1
        if lp is not None:
            self._pending_logprobs.append(lp)
        self._pending_tokens.append(token)
        p = self.params
        eos = token in engine.eos_ids and not p.ignore_eos
        at_length = (self.num_generated >= p.max_tokens
                     or len(self.prompt_ids) + self.num_generated >= engine.context_len)
        if self.stream.add(None if eos else token, final=eos or at_length):
            self._finish("stop")
            return
        if eos or at_length:
            self._finish("stop" if eos else "length")
            return
        safe = self.stream.safe_length(self._emitted)
        if safe > self._emitted or self._pending_logprobs:
            out = Output(self, self.text[self._emitted:safe], self._pending_tokens, self._pending_logprobs)
            self._emitted = safe
            self._pending_tokens, self._pending_logprobs = [], []
            self._emit(out)


class Engine:
    """Continuous-batching generation over one model; thread-safe `submit`, one scheduler thread (`start`)."""

    def __init__(self, model, tokenizer, max_batch: int = 16, context_len: int | None = None,
                 max_prefill_tokens: int = 8192):
        import torch

        from tunelab.decoding.stops import context_length, pad_token_id, stop_token_ids
        self.model = model
        # a private copy for the engine thread: a fast tokenizer is one Rust object, and using it from two
        # threads at once can fail ("Already borrowed")
        try:
            self.tokenizer = copy.deepcopy(tokenizer)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot be copied is shared
            self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.context_len = int(context_len or context_length(model, tokenizer))
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer, self.eos_ids)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() \
            is not None else len(tokenizer)
        self.max_batch = max(1, int(max_batch))
        self.max_prefill_tokens = max_prefill_tokens
        self.stats = {"requests": 0, "sequences": 0, "prefills": 0, "steps": 0, "generated_tokens": 0,
                      "max_batch": 0, "batch_rows_sum": 0, "aborted": 0, "errors": 0, "active": 0, "waiting": 0}
        self._torch = torch
        self._cv = threading.Condition()
        self._pending: deque[Sequence] = deque()
        self._running = RunningRows(self.max_batch)  # owners: the Sequence of each batch row
        self._merging = False
        self._closed = False
        # tests: called as fault_hook(stage, seq) at "setup", "prefill", "sample" and "decode"; raising fails
        # that row there as a real error would
        self.fault_hook: Callable[[str, Sequence], None] | None = None
        self._thread: threading.Thread | None = None   # the scheduler, once started

    # public --------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the scheduler thread (once: a started engine is returned as it is); returns the engine. The
        check that allows a batch's prefill as a trie (`decoding.batch.tree_prefill_ok`: a few forwards, seconds
        on a CPU while oneDNN builds its kernels) is made here, before a first request would wait for it."""
        from tunelab.decoding.batch import tree_prefill_ok
        if self._thread is None and not self._closed:
            with self._torch.inference_mode():
                tree_prefill_ok(self.model)
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
                self._thread.start()
        return self

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, seqs: list[Sequence]) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            if self._thread is None:
                raise RuntimeError("engine is not started (Engine.start, or use it in a with block)")
            self.stats["requests"] += 1
            self.stats["sequences"] += len(seqs)
            self._pending.extend(seqs)
            self.stats["waiting"] = len(self._pending)
            self._cv.notify()

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Output]:
        """Blocking iterator over one sequence's events; closing it early cancels the sequence."""
        return stream_sequence(self.submit, prompt_ids, params)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the scheduler (what waits or runs ends as aborted) and wait up to `timeout` seconds for it; again,
        or on an engine never started, nothing more happens."""
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # scheduler -----------------------------------------------------------------------------------
    def _run(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._closed and not self._pending and not self._running:
                        self._cv.wait()
                    if self._closed:
                        break
                    admit = self._take_pending()
                    self.stats["waiting"] = len(self._pending)
                if admit:
                    self._prefill(admit)
                if self._running:
                    try:
                        self._step()
                    except Exception:  # noqa: BLE001 - the shared forward pass: no single row to blame
                        log.exception("decode step failed")
                        for s in self._running.owners:
                            self._fail(s)
                        self._running.clear()
                self.stats["active"] = len(self._running)
        for s in list(self._pending) + self._running.owners:
            s._finish("abort", "server shutting down")

    def _take_pending(self) -> list[Sequence]:
        room = self._running.room()
        admit: list[Sequence] = []
        longest = 0
        while self._pending and len(admit) < room:
            s = self._pending[0]
            if s.cancelled:
                self._pending.popleft()
                self.stats["aborted"] += 1
                s._finish("abort")
                continue
            longest2 = max(longest, len(s.prompt_ids))
            if admit and longest2 * (len(admit) + 1) > self.max_prefill_tokens:
                break
            admit.append(self._pending.popleft())
            longest = longest2
        return admit

    def _fault(self, stage: str, seq: Sequence) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage, seq)

    def _fail(self, seq: Sequence) -> None:
        """End one sequence with an error (the caller has logged why)."""
        if not seq.finished:
            self.stats["errors"] += 1
            seq._finish("error", ROW_ERROR)

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Set each newcomer up (its text stream, its generator), then prefill them together; one that wants
        prompt log-probabilities goes alone, since it needs the logits of every position ([length, vocab]
        per row, in the model's dtype)."""
        ready = []
        for s in seqs:
            try:
                self._fault("setup", s)
                s.stream = TextStream(self.tokenizer, s.params.stop)
                if s.generator is None and not s.params.greedy:
                    s.generator = self._torch.Generator(device=self.device).manual_seed(s._seed)
                ready.append(s)
            except Exception:  # noqa: BLE001 - this row's own parameters: it alone fails
                log.exception("sequence %d could not be set up", s.id)
                self._fail(s)
        groups = [[s for s in ready if s.params.prompt_logprobs is None]]
        groups += [[s] for s in ready if s.params.prompt_logprobs is not None]
        for group in groups:
            if group:
                self._prefill_isolated(group)

    def _prefill_isolated(self, group: list[Sequence]) -> None:
        """Prefill a group; if that fails, each row that has not started yet is retried alone, so a row that
        cannot be prefilled fails by itself."""
        self._merging = False
        try:
            self._prefill_group(group)
        except Exception:  # noqa: BLE001 - a bad request must not stop the engine
            if self._merging:   # the running batch may be half-merged: it cannot go on
                log.exception("merging new rows into the running batch failed")
                for s in self._running.owners + group:
                    self._fail(s)
                self._running.clear()
                return
            fresh = [s for s in group if not s.finished and s.num_generated == 0]
            if len(group) == 1 or len(fresh) < len(group):
                log.exception("prefill failed")
            else:
                log.warning("prefill of %d rows failed; retrying them one by one", len(group))
            for s in group:
                if s in fresh and len(group) > 1:
                    self._prefill_isolated([s])
                else:
                    self._fail(s)

    def _prefill_group(self, seqs: list[Sequence]) -> None:
        from tunelab.decoding.batch import DecodeBatch

        for s in seqs:
            self._fault("prefill", s)
        want_prompt_lp = any(s.params.prompt_logprobs is not None for s in seqs)
        # decode steps write the cache in place, 64 positions at a time
        batch, logits = DecodeBatch.prefill(self.model, [s.prompt_ids for s in seqs], self.pad_id, 64,
                                            all_logits=want_prompt_lp)
        self.stats["prefills"] += 1
        if want_prompt_lp:
            width = logits.shape[1]
            for i, s in enumerate(seqs):
                if s.params.prompt_logprobs is not None:
                    s.prompt_logprobs = self._prompt_logprobs(logits[i, width - len(s.prompt_ids):],
                                                              s.prompt_ids, s.params.prompt_logprobs)
            logits = logits[:, -1, :].float()
        for s in seqs:
            if s.cancelled:
                self.stats["aborted"] += 1
                s._finish("abort")
            elif s.params.max_tokens <= 0:
                s._finish("length")
        rows = seqs
        if any(s.finished for s in seqs):
            if all(s.finished for s in seqs):
                return
            order, logits = batch.remove([i for i, s in enumerate(seqs) if s.finished], logits)
            rows = [seqs[i] for i in order]
        tokens, host, lps = self._sample(logits, rows)
        ended = [j for j, s in enumerate(rows) if not self._take(s, host[j], lps[j])]
        if len(ended) == len(rows):
            return
        if ended:
            order, tokens = batch.remove(ended, tokens)
            rows = [rows[j] for j in order]
        self._merging = True
        self._running.join(batch, tokens, rows)

    def _step(self) -> None:
        running = self._running
        gone = [i for i, s in enumerate(running.owners) if s.cancelled or s.finished]
        for i in gone:
            s = running.owners[i]
            if not s.finished:
                self.stats["aborted"] += 1
                s._finish("abort")
        running.leave(gone)
        if not running:
            return
        n = len(running)
        logits = running.step()
        self.stats["steps"] += 1
        self.stats["batch_rows_sum"] += n
        self.stats["max_batch"] = max(self.stats["max_batch"], n)
        running.tokens, host, lps = self._sample(logits, running.owners)
        running.leave([i for i, s in enumerate(running.owners) if not self._take(s, host[i], lps[i])])

    # sampling and log-probabilities --------------------------------------------------------------
    def _take(self, seq: Sequence, token: int | None, lp: TokenLogprob | None) -> bool:
        """Give a row its sampled token (None: its sampling failed); whether it decodes on. A failure here ends
        this row only."""
        if token is None:
            self._fail(seq)
            return False
        try:
            self._fault("decode", seq)
            seq._append(token, lp, self)
        except Exception:  # noqa: BLE001
            log.exception("sequence %d failed taking its token", seq.id)
            self._fail(seq)
            return False
        self.stats["generated_tokens"] += 1
        return not seq.finished

    def _sample(self, logits, seqs: list[Sequence]):
        """The rows' next tokens on the device, the same on the host (None where that row's sampling failed) and
        each row's log-probability entry. The rows are sampled together; if that fails, one by one from the same
        generator states, so each row that can be sampled gets the draw it would have had alone. The host gets
        the tokens and the log-probabilities asked for in one copy."""
        torch = self._torch
        from tunelab.decoding.forward import to_device
        from tunelab.decoding.sampling import sample_next, sample_tokens
        params, gens = [s.params for s in seqs], [s.generator for s in seqs]
        states = [g.get_state() if g is not None else None for g in gens]
        host: list[int | None] | None = None
        try:
            for s in seqs:
                self._fault("sample", s)
            tokens = sample_next(logits, params, gens)
        except Exception:  # noqa: BLE001
            host = []
            for i, s in enumerate(seqs):
                try:
                    if gens[i] is not None:
                        gens[i].set_state(states[i])
                    self._fault("sample", s)
                    host.append(sample_tokens(logits[i:i + 1], [params[i]], [gens[i]])[0])
                except Exception:  # noqa: BLE001
                    log.exception("sampling failed for sequence %d", s.id)
                    host.append(None)
            tokens = to_device(torch.tensor([self.pad_id if t is None else t for t in host]), self.device)
        lps: list[TokenLogprob | None] = [None] * len(seqs)
        ks = [None if s.params.logprobs is None else min(max(int(s.params.logprobs), 0), MAX_LOGPROBS) for s in seqs]
        if all(k is None for k in ks):
            return tokens, host if host is not None else tokens.tolist(), lps
        try:
            table = self._logprob_table(logits, tokens, max(k for k in ks if k is not None)).tolist()
        except Exception:  # noqa: BLE001
            log.exception("log-probabilities failed for sequences %s",
                          [s.id for s, k in zip(seqs, ks) if k is not None])
            host = host if host is not None else tokens.tolist()
            return tokens, [None if k is not None else t for t, k in zip(host, ks)], lps
        if host is None:
            host = [int(row[0]) for row in table]
        for i, (k, row) in enumerate(zip(ks, table)):
            if k is not None and host[i] is not None:
                lps[i] = self._entry(host[i], row[1:], k)
        return tokens, host, lps

    def _logprob_table(self, logits, targets, k: int):
        """One float32 row per token: [the token, its log-probability, the k largest log-probabilities, their
        ids] (token ids travel as float32: exact below 2**24, far above any vocabulary)."""
        from tunelab.decoding.sampling import token_logprobs
        chosen, _, values, ids = token_logprobs(logits, targets, k)
        return self._torch.cat([targets[:, None].float(), chosen[:, None], values, ids.float()], dim=1)

    @staticmethod
    def _entry(token: int, row: list[float], k: int) -> TokenLogprob:
        """A `TokenLogprob` from a `_logprob_table` row without its token: [log-probability, K values, K ids]."""
        width = (len(row) - 1) // 2
        return TokenLogprob(token, row[0], [(int(i), v) for v, i in zip(row[1:1 + k], row[1 + width:1 + width + k])])

    def _prompt_logprobs(self, logits, prompt_ids: list[int], k: int) -> list[TokenLogprob]:
        """Log-probability of each prompt token given the ones before it (None for the first), from the prompt's
        logits in the model's dtype, a chunk of positions at a time, copied to the host once."""
        from tunelab.decoding.forward import to_device
        k = min(max(int(k), 0), MAX_LOGPROBS)
        entries = [TokenLogprob(prompt_ids[0], None, [])]
        if len(prompt_ids) > 1:
            targets = to_device(self._torch.tensor(prompt_ids[1:]), self.device)
            table = self._logprob_table(logits[:-1], targets, k).tolist()
            entries += [self._entry(token, row[1:], k) for token, row in zip(prompt_ids[1:], table)]
        return entries


def stream_sequence(submit, prompt_ids: list[int], params: SamplingParams) -> Iterator[Output]:
    """One sequence's events as a blocking iterator, whichever engine `submit` hands it to (the embedded one, or
    vLLM's: `serve.engine_vllm`); closing the iterator early cancels the sequence."""
    q: queue.Queue[Output] = queue.Queue()
    seq = Sequence(prompt_ids, params, q.put)
    submit([seq])
    try:
        while True:
            out = q.get()
            yield out
            if out.finish_reason is not None:
                return
    finally:
        seq.cancel()
