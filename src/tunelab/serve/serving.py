"""What every OpenAI endpoint family shares (vLLM's `OpenAIServing`): the request checks, the job that collects
a request's engine output, logprob bodies, usage and server-sent events.

The serving classes (serving_chat.py, serving_completion.py, serving_models.py, serving_tokenization.py) each
answer one family of routes; they inherit these pieces rather than copy them, so a limit or a body's shape is
decided once for every route. Every check raises `APIError` before any work is queued: a request's bad
parameters never reach the engine another request is using.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.serve.engine import Output, SamplingParams, Sequence, TokenLogprob
from tunelab.serve.models import ServedModel
from tunelab.serve.protocol import APIError, Limits

log = logging.getLogger("tunelab.serve")


class Job:
    """The sequences of one request and the asyncio queue their engine events arrive on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int):
        self.loop = loop
        self.n = n                      # choices per prompt
        self.queue: asyncio.Queue[Output] = asyncio.Queue()
        self.seqs: list[Sequence] = []
        self.logprobs: dict[int, list[TokenLogprob]] = {}

    def callback(self, out: Output) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, out)
        except RuntimeError:  # loop closed: the server is going away
            out.seq.cancel()

    def prompt_of(self, seq: Sequence) -> int:
        """Which of the request's prompts `seq` continues (choice index = prompt * n + j)."""
        return seq.index // self.n

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel()


def sse(obj) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def streaming(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def usage(job: Job, prompts: list[list[int]]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(s.num_generated for s in job.seqs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def template_refused(e: Exception) -> APIError:
    """The 400 for messages the model's chat template refuses (its raise_exception(), e.g. roles out of order)."""
    log.info("chat template refused the messages: %s", e)
    return APIError(400, f"cannot format these messages with the model's chat template: {e}", param="messages")


class OpenAIServing:
    """The served model, the server's limits, and the checks and engine plumbing every endpoint uses."""

    def __init__(self, served: ServedModel, limits: Limits):
        self.served = served
        self.limits = limits
        self.engine = served.engine

    # checks --------------------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name and name != self.served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server has '{self.served.name}'.",
                           param="model", code="model_not_found")

    def check_length(self, n_prompt: int, max_tokens: int, param: str) -> None:
        ctx = self.served.context_len
        if n_prompt == 0:
            raise APIError(400, "The prompt is empty.", param=param)
        if n_prompt + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                                f"completion). Please reduce the length of the prompt or the completion.",
                           param=param, code="context_length_exceeded")

    def check_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenising it, text that no number of tokens within the context could hold."""
        if self.served.too_long(chars):
            raise APIError(400, f"This model's maximum context length is {self.served.context_len} tokens; the "
                                f"{param} has {chars} characters, more than that many tokens can hold. Please "
                                f"reduce the length of the {param}.", param=param, code="context_length_exceeded")

    def check_sequences(self, prompts: int, n: int, param: str) -> None:
        if prompts * n > self.limits.max_sequences:
            raise APIError(400, f"This request asks for {prompts} prompt(s) × n={n} = {prompts * n} sequences; "
                                f"this server takes at most {self.limits.max_sequences} per request "
                                f"(--max-sequences).", param=param)

    def check_ids(self, ids: list[int]) -> None:
        vocab = self.engine.vocab_size
        bad = [i for i in ids if i < 0 or i >= vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range (vocabulary size {vocab})", param="prompt")

    # sampling ------------------------------------------------------------------------------------
    def default_max_tokens(self, room: int, fallback: int) -> int:
        """max_tokens left out: the model's default, else `fallback`, within the `room` the context leaves."""
        return max(min(self.served.defaults.max_tokens or fallback, room), 0)

    def params_for(self, req, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None,
                   seq_seed: int | None) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, **self.served.sampling(req.temperature, req.top_p, req.top_k),
                              stop=req.stop_list(), seed=seq_seed, logprobs=logprobs,
                              prompt_logprobs=prompt_logprobs, ignore_eos=req.ignore_eos)

    @staticmethod
    def seed_for(req, j: int) -> int | None:
        return None if req.seed is None else req.seed + j

    # the engine ----------------------------------------------------------------------------------
    def start(self, job: Job, prompts: list[list[int]], make_params: Callable[[int, int], SamplingParams]) -> None:
        """Submit n sequences per prompt; choice index = prompt * n + j (OpenAI's order)."""
        for p, ids in enumerate(prompts):
            for j in range(job.n):
                idx = p * job.n + j
                job.seqs.append(Sequence(ids, make_params(p, j), job.callback, index=idx))
                job.logprobs[idx] = []
        self.engine.submit(job.seqs)

    @staticmethod
    async def collect(job: Job, request: Request) -> None:
        """Wait for every sequence to finish; a client that goes away cancels its sequences."""
        remaining = len(job.seqs)
        try:
            while remaining:
                try:
                    out = await asyncio.wait_for(job.queue.get(), timeout=1.0)
                except asyncio.TimeoutError as err:
                    if await request.is_disconnected():
                        job.cancel()
                        raise APIError(499, "client closed the request") from err
                    continue
                job.logprobs[out.seq.index].extend(out.logprobs)
                if out.finish_reason is not None:
                    remaining -= 1
                    if out.finish_reason == "error":
                        raise APIError(500, out.error or "generation failed", type="server_error")
        finally:
            job.cancel()

    # logprobs ------------------------------------------------------------------------------------
    def top_dict(self, entry: TokenLogprob) -> dict[str, float] | None:
        if entry.logprob is None:
            return None
        d = {self.served.token_str(i): lp for i, lp in entry.top}
        d.setdefault(self.served.token_str(entry.token_id), entry.logprob)
        return d

    def completion_logprobs(self, entries: list[TokenLogprob], offset: int) -> dict:
        tokens = [self.served.token_str(e.token_id) for e in entries]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [self.top_dict(e) for e in entries], "text_offset": offsets}

    def chat_logprobs(self, entries: list[TokenLogprob]) -> dict:
        def item(i: int, lp: float) -> dict:
            s = self.served.token_str(i)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(i, lp) for i, lp in e.top]}
                            for e in entries]}
