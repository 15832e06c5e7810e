"""POST /v1/completions: one or more prompts (text or token ids) continued n times each, whole or streamed.

What lm-evaluation-harness and other scorers need lives here: `echo` (the prompt returned before its
continuation) and `logprobs` k for the prompt's tokens as well as the output's, with OpenAI's text offsets.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.serve.engine import SamplingParams
from tunelab.serve.protocol import APIError, CompletionRequest, error_body
from tunelab.serve.serving import Job, OpenAIServing, sse, streaming, usage


class OpenAIServingCompletion(OpenAIServing):

    async def create_completion(self, req: CompletionRequest, request: Request) -> dict | StreamingResponse:
        served = self.served
        self.check_model(req.model)
        refused = getattr(self.engine, "refuses_prompt_logprobs", None)
        if refused and req.echo and req.logprobs is not None:
            raise APIError(400, refused, param="echo", code="unsupported_by_engine")
        raw = req.prompts()
        self.check_sequences(len(raw), req.n, "prompt" if len(raw) > 1 else "n")
        for p in raw:
            if isinstance(p, str):
                self.check_chars(len(p), "prompt")
            else:
                self.check_ids(p)
                self.check_length(len(p), req.max_tokens or 0, "prompt")

        def encode_all() -> tuple[list[list[int]], list[str]]:
            prompts, texts = [], []
            for p in raw:
                if isinstance(p, str):
                    prompts.append(served.encode(p, add_special_tokens=True))
                    texts.append(p)
                else:
                    prompts.append(list(p))
                    texts.append(served.decode(list(p)))
            return prompts, texts
        prompts, texts = await served.off_loop(encode_all)
        max_tokens = req.max_tokens
        for ids in prompts:
            if max_tokens is None:
                self.check_length(len(ids), 0, "prompt")
            else:
                self.check_length(len(ids), max_tokens, "prompt")
        prompt_lp = req.logprobs if (req.echo and req.logprobs is not None) else None
        job = Job(asyncio.get_running_loop(), req.n)

        def make(p: int, j: int) -> SamplingParams:
            limit = max_tokens if max_tokens is not None else self.default_max_tokens(
                served.context_len - len(prompts[p]), 16)
            return self.params_for(req, limit, req.logprobs, prompt_lp, self.seed_for(req, j))
        self.start(job, prompts, make)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}

        if not req.stream:
            await self.collect(job, request)
            choices = []
            for s in job.seqs:
                p = job.prompt_of(s)
                text = (texts[p] + s.text) if req.echo else s.text
                lpobj = None
                if req.logprobs is not None:
                    entries = (s.prompt_logprobs or []) + job.logprobs[s.index] if req.echo else job.logprobs[s.index]
                    lpobj = self.completion_logprobs(entries, 0 if req.echo else len(texts[p]))
                choices.append({"index": s.index, "text": text, "logprobs": lpobj, "finish_reason": s.finish_reason})
            return {**head, "choices": choices, "usage": usage(job, prompts)}
        return streaming(self._events(req, job, head, prompts, texts))

    async def _events(self, req: CompletionRequest, job: Job, head: dict, prompts: list[list[int]],
                      texts: list[str]):
        """The stream: text (the prompt first, with `echo`) and logprobs as the engine sends them, a finish per
        choice, usage if asked, [DONE]."""
        try:
            echoed: set[int] = set()
            offsets = {s.index: 0 if req.echo else len(texts[job.prompt_of(s)]) for s in job.seqs}
            remaining = len(job.seqs)
            while remaining:
                out = await job.queue.get()
                s = out.seq
                if out.finish_reason == "error":
                    yield sse(error_body(out.error or "generation failed", "server_error"))
                    break
                text, entries = out.text, list(out.logprobs)
                if req.echo and s.index not in echoed:
                    echoed.add(s.index)
                    text = texts[job.prompt_of(s)] + text
                    entries = (s.prompt_logprobs or []) + entries
                lpobj = None
                if req.logprobs is not None:
                    lpobj = self.completion_logprobs(entries, offsets[s.index])
                    offsets[s.index] += sum(len(t) for t in lpobj["tokens"])
                if out.finish_reason is not None:
                    remaining -= 1
                yield sse({**head, "choices": [{"index": s.index, "text": text, "logprobs": lpobj,
                                                "finish_reason": out.finish_reason}]})
            if req.stream_options and req.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": usage(job, prompts)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()
