"""POST /v1/chat/completions: messages through the model's chat template, then n choices, whole or streamed.

The messages are rendered and tokenised on a worker thread (a long conversation must not stall the event loop),
and checked against the context twice: by characters before the template runs, by tokens after.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.serve.protocol import ChatCompletionRequest, error_body
from tunelab.serve.serving import Job, OpenAIServing, sse, streaming, template_refused, usage


class OpenAIServingChat(OpenAIServing):

    async def create_chat_completion(self, req: ChatCompletionRequest, request: Request) -> dict | StreamingResponse:
        served = self.served
        self.check_model(req.model)
        self.check_sequences(1, req.n, "n")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        self.check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            prompt_text = await served.off_loop(served.render_chat, messages, req.add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception(), e.g. roles out of order
            raise template_refused(e) from e
        self.check_chars(len(prompt_text), "messages")
        ids = await served.off_loop(served.encode, prompt_text, False)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is None:
            room = served.context_len - len(ids)
            max_tokens = self.default_max_tokens(room, room)
            if max_tokens == 0:
                self.check_length(len(ids), 1, "messages")
        self.check_length(len(ids), max_tokens, "messages")
        lp = (req.top_logprobs or 0) if req.logprobs else None
        job = Job(asyncio.get_running_loop(), req.n)
        self.start(job, [ids], lambda p, j: self.params_for(req, max_tokens, lp, None, self.seed_for(req, j)))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": served.name}

        if not req.stream:
            await self.collect(job, request)
            choices = [{"index": s.index, "message": {"role": "assistant", "content": s.text},
                        "logprobs": self.chat_logprobs(job.logprobs[s.index]) if lp is not None else None,
                        "finish_reason": s.finish_reason} for s in job.seqs]
            return {**head, "choices": choices, "usage": usage(job, [ids])}
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return streaming(self._events(job, {**head, "object": "chat.completion.chunk"}, ids, lp, include_usage))

    async def _events(self, job: Job, chunk: dict, ids: list[int], lp: int | None, include_usage: bool):
        """The stream: a role delta per choice, then content deltas as the engine sends them, a finish per choice,
        usage if asked, [DONE]."""
        try:
            for s in job.seqs:
                yield sse({**chunk, "choices": [{"index": s.index, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
            remaining = len(job.seqs)
            while remaining:
                out = await job.queue.get()
                if out.finish_reason == "error":
                    yield sse(error_body(out.error or "generation failed", "server_error"))
                    break
                if out.text or out.logprobs:
                    yield sse({**chunk, "choices": [{
                        "index": out.seq.index, "delta": {"content": out.text},
                        "logprobs": self.chat_logprobs(out.logprobs) if lp is not None else None,
                        "finish_reason": None}]})
                if out.finish_reason is not None:
                    remaining -= 1
                    yield sse({**chunk, "choices": [{"index": out.seq.index, "delta": {}, "logprobs": None,
                                                     "finish_reason": out.finish_reason}]})
            if include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(job, [ids])})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()   # the client went away (or we are done): free the engine slots
