"""The serving engine when vLLM decodes (`tunelab serve --engine vllm`): `serve.engine.Engine`'s contract, fed by
a vLLM server on the loopback.

The serving classes, the UI's local backend and `tunelab generate` hand an engine `Sequence`s (`submit`, or the
blocking `stream`) and read `Output` events; this engine answers them the same way, so none of them knows which
engine decodes. Each sequence is one streamed `/v1/completions` request to vLLM: its prompt as token ids, every
sampling field said (so the server's defaults never decide), the model's stop ids as `stop_token_ids`, and
`return_token_ids`, so tokens come back as ids. Each id goes through the sequence's own `_append`, as the embedded
engine's sampled tokens do: stop tokens, `max_tokens`, the context's end, tunelab's `TextStream` (detokenising and
stop strings) and the events are the one code both engines share. A sequence that ends on tunelab's side (a stop
string, a client gone) closes its request, and vLLM aborts it.

One `VLLMServingEngine` talks to one server for every name it serves; `model(name, …)` gives one served name (the
base, or a LoRA adapter loaded by name) its own engine object: that name's tokenizer, stop ids and context, the
shared requests and counters. The requests run on an asyncio loop of the engine's own thread; at most `max_batch`
are open at once, the rest wait their turn.

Isolation: a request vLLM refuses or drops ends its sequence only (finish_reason "error", no internals in the
text; the log has the reason). Not asked of vLLM: prompt log-probabilities (`echo` with `logprobs`): with LoRA
enabled its CPU build dies on a batch of them (vllm-project/vllm#16668), so such a sequence fails at once with
`PROMPT_LOGPROBS_REFUSED`, which the server answers as a 400 before any work.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from typing import Iterator

from tunelab.decoding.text_stream import TextStream
from tunelab.serve.engine import (MAX_LOGPROBS, ROW_ERROR, Output, SamplingParams, Sequence, TokenLogprob,
                                  stream_sequence)

log = logging.getLogger("tunelab.serve")

PROMPT_LOGPROBS_REFUSED = ("log-probabilities of the prompt (echo with logprobs) are not served through vLLM: with "
                           "LoRA adapters enabled its prompt log-probabilities are not per token and its CPU build "
                           "fails on them (vllm-project/vllm#16668); serve this model with the embedded engine "
                           "(tunelab serve without --engine vllm) for them")
_INT64 = 2 ** 64


def _int64(seed: int) -> int:
    """A seed in vLLM's range (signed 64 bits): tunelab's seed + j may pass 2**63 - 1, wrapped as a C int would."""
    return (seed + _INT64 // 2) % _INT64 - _INT64 // 2


def _token_id(text: str) -> int:
    """A token vLLM names as 'token_id:N' (`return_tokens_as_token_ids`)."""
    return int(text.rsplit(":", 1)[1])


class VLLMServingEngine:
    """Every served name's requests to the vLLM server at `url` (http://host:port); `max_batch`: requests open at
    once. `start()` starts the loop thread, `close()` ends it (what waits or runs ends as aborted)."""

    def __init__(self, url: str, max_batch: int = 16, api_key: str | None = None, timeout: float = 600.0):
        from tunelab.decoding.openai_client import Endpoint
        self.url = url.rstrip("/").removesuffix("/v1")
        self.endpoint = Endpoint(self.url + "/v1", api_key, timeout=timeout)
        self.max_batch = max(1, int(max_batch))
        self.stats = {"requests": 0, "sequences": 0, "prefills": 0, "steps": 0, "generated_tokens": 0,
                      "max_batch": 0, "batch_rows_sum": 0, "aborted": 0, "errors": 0, "active": 0, "waiting": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._lock = threading.Lock()
        self._closed = False

    def model(self, name: str, tokenizer, eos_ids: frozenset[int], context_len: int,
              vocab_size: int) -> "VLLMModelEngine":
        """The engine of one served name: `name` as vLLM knows it (the base's served name, or an adapter's)."""
        return VLLMModelEngine(self, name, tokenizer, eos_ids, context_len, vocab_size)

    # the loop thread ---------------------------------------------------------------------------------------
    def start(self) -> "VLLMServingEngine":
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            if self._thread is None:
                self._loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run():
                    asyncio.set_event_loop(self._loop)
                    self._slots = asyncio.Semaphore(self.max_batch)
                    self._loop.call_soon(ready.set)
                    self._loop.run_forever()
                self._thread = threading.Thread(target=run, name="tunelab-vllm-engine", daemon=True)
                self._thread.start()
                ready.wait()
        return self

    def submit(self, engine: "VLLMModelEngine", seqs: list[Sequence]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            if self._thread is None:
                raise RuntimeError("engine is not started (start it first)")
            self.stats["requests"] += 1
            self.stats["sequences"] += len(seqs)
            for seq in seqs:
                self._loop.call_soon_threadsafe(self._spawn, engine, seq)

    def _spawn(self, engine: "VLLMModelEngine", seq: Sequence) -> None:
        if self._closed:
            seq._finish("abort", "server shutting down")
            return
        task = self._loop.create_task(self._run(engine, seq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self, timeout: float = 10.0) -> None:
        """End the loop: every sequence waiting or running ends as aborted; again, nothing more happens."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None:
            return

        async def shut():
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.endpoint.aclose()
        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout)
        except Exception:  # noqa: BLE001 - closing is best effort: the loop stops below whatever happened
            log.debug("closing the vLLM engine's requests", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # one sequence ------------------------------------------------------------------------------------------
    async def _run(self, engine: "VLLMModelEngine", seq: Sequence) -> None:
        stats = self.stats
        stats["waiting"] += 1
        waiting = True
        try:
            async with self._slots:
                stats["waiting"] -= 1
                waiting = False
                if seq.cancelled:
                    stats["aborted"] += 1
                    seq._finish("abort")
                    return
                stats["active"] += 1
                stats["max_batch"] = max(stats["max_batch"], stats["active"])
                try:
                    await self._decode(engine, seq)
                finally:
                    stats["active"] -= 1
        except asyncio.CancelledError:
            seq._finish("abort", "server shutting down")
        except Exception as e:  # noqa: BLE001 - this request's failure: it alone ends
            log.error("sequence %d: vLLM did not answer it: %s", seq.id, getattr(e, "message", None) or e)
            if not seq.finished:
                stats["errors"] += 1
                seq._finish("error", ROW_ERROR)
        finally:
            if waiting:
                stats["waiting"] -= 1

    def _body(self, engine: "VLLMModelEngine", seq: Sequence) -> dict:
        p = seq.params
        greedy = p.greedy
        k = None if p.logprobs is None else min(max(int(p.logprobs), 0), MAX_LOGPROBS)
        extra = {"top_k": -1 if greedy or p.top_k <= 0 else int(p.top_k), "min_p": 0.0, "repetition_penalty": 1.0,
                 "return_token_ids": True, "ignore_eos": bool(p.ignore_eos), "skip_special_tokens": False,
                 "include_stop_str_in_output": True,
                 "stop_token_ids": [] if p.ignore_eos else sorted(engine.eos_ids)}
        body = {"model": engine.name, "prompt": seq.prompt_ids, "extra_body": extra,
                "max_tokens": min(int(p.max_tokens), engine.context_len - len(seq.prompt_ids)),
                "temperature": 0.0 if greedy else float(p.temperature), "top_p": 1.0 if greedy else float(p.top_p),
                "presence_penalty": 0.0, "frequency_penalty": 0.0}
        if p.seed is not None:
            body["seed"] = _int64(int(p.seed))
        if p.stop:
            body["stop"] = list(p.stop)     # vLLM ends early; tunelab's stream cuts the text where it cuts it
        if k is not None:
            body["logprobs"] = k
            extra["return_tokens_as_token_ids"] = True
        return body

    async def _decode(self, engine: "VLLMModelEngine", seq: Sequence) -> None:
        seq.stream = TextStream(engine.tokenizer, seq.params.stop)
        if seq.params.prompt_logprobs is not None:
            seq._finish("error", PROMPT_LOGPROBS_REFUSED)
            return
        if seq.params.max_tokens <= 0:
            seq._finish("length")
            return
        body = self._body(engine, seq)
        k = body.get("logprobs")
        stream = await self.endpoint.acompletion_stream(retries=0, **body)
        finish = None
        try:
            async for chunk in stream:
                for choice in chunk.choices or ():
                    ids = list(getattr(choice, "token_ids", None) or ())
                    lps = self._logprobs(choice, ids, k) if k is not None else [None] * len(ids)
                    for token, lp in zip(ids, lps):
                        if seq.cancelled or seq.finished:
                            break
                        seq._append(int(token), lp, engine)
                        self.stats["generated_tokens"] += 1
                    finish = choice.finish_reason or finish
                if seq.cancelled or seq.finished:
                    break
        finally:
            await stream.close()
        if seq.cancelled and not seq.finished:
            self.stats["aborted"] += 1
            seq._finish("abort")
        elif not seq.finished:      # vLLM ended it where tunelab's own checks did not (its own stop string match)
            seq._finish("length" if finish == "length" else "stop")

    @staticmethod
    def _logprobs(choice, ids: list[int], k: int) -> list[TokenLogprob | None]:
        """The chunk's tokens' log-probabilities as `TokenLogprob`s: vLLM's raw ones, names as 'token_id:N'."""
        lp = getattr(choice, "logprobs", None)
        if lp is None or not lp.token_logprobs:
            return [None] * len(ids)
        out: list[TokenLogprob | None] = []
        tops = lp.top_logprobs or [None] * len(lp.token_logprobs)
        for token, value, top in zip(ids, lp.token_logprobs, tops):
            ranked = sorted(((_token_id(t), v) for t, v in (top or {}).items()), key=lambda x: -x[1])[:k]
            out.append(TokenLogprob(int(token), value, ranked))
        return out + [None] * (len(ids) - len(out))


class VLLMModelEngine:
    """One served name's engine: `serve.engine.Engine`'s contract (`submit`, `stream`, `context_len`, `eos_ids`,
    `vocab_size`, `max_batch`, `stats`) over the shared `VLLMServingEngine`. Its owner is the shared engine:
    `start` and `close` here change nothing."""

    kind = "vllm"
    refuses_prompt_logprobs = PROMPT_LOGPROBS_REFUSED

    def __init__(self, shared: VLLMServingEngine, name: str, tokenizer, eos_ids: frozenset[int], context_len: int,
                 vocab_size: int):
        self.shared = shared
        self.name = name
        # a private copy for the loop thread, as the embedded engine keeps one for its scheduler
        try:
            self.tokenizer = copy.deepcopy(tokenizer)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot be copied is shared
            self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.context_len = int(context_len)
        self.vocab_size = int(vocab_size)

    @property
    def max_batch(self) -> int:
        return self.shared.max_batch

    @property
    def stats(self) -> dict:
        return self.shared.stats

    def start(self) -> "VLLMModelEngine":
        return self

    def close(self, timeout: float = 5.0) -> None:
        """The shared engine's owner ends it (`ServedModels.close`)."""

    def __enter__(self) -> "VLLMModelEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, seqs: list[Sequence]) -> None:
        self.shared.submit(self, seqs)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Output]:
        """Blocking iterator over one sequence's events; closing it early cancels the sequence."""
        return stream_sequence(self.submit, prompt_ids, params)
