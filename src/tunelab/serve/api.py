"""`tunelab serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the batching engine.

  GET  /health                      no key needed
  GET  /v1/models
  POST /v1/chat/completions         messages through the model's chat template; stream, n, seed, stop, logprobs
  POST /v1/completions              prompt: str | [str] | [int] | [[int]]; echo; logprobs k (prompt and output)
  POST /tokenize, /detokenize       vLLM-style, so lm-evaluation-harness can tokenize remotely
  GET  /tokenizer_info
  GET  /stats                       engine counters (requests, steps, largest batch, ...)

A parameter a request leaves out (temperature, top_p, top_k, max_tokens) takes the model's default from its
generation_config.json (`ServedModel.defaults`: temperature 0 for a tunelab checkpoint scored greedily), else
OpenAI's (temperature 1, top_p 1, no top-k; max_tokens 16 for completions, the rest of the context for chat).

Errors are answered with OpenAI's body {"error": {"message", "type", "param", "code"}}; no request can stop
the server or fail another: every parameter is bounded at this edge (400), a body over `--max-request-bytes`
is refused with 413 before it is parsed, a prompt that cannot fit the context is refused before it is tokenised,
and a generation failure ends that request's sequence only (500, with no internals in the body; the log has
them). Tokenising and detokenising run on worker threads, never on the event loop, so /health and running
streams keep their pace whatever a request carries.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from typing import AsyncIterator

from tunelab.serve import require_extra

require_extra("fastapi", "uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from tunelab.errors import TunelabError  # noqa: E402
from tunelab.serve.engine import Output, SamplingParams, Sequence, TokenLogprob  # noqa: E402
from tunelab.serve.models import ServedModel, describe_defaults, release_heap  # noqa: E402
from tunelab.serve.protocol import (APIError,  # noqa: E402
                                    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, Limits,
                                    TokenizeRequest, error_body)

log = logging.getLogger("tunelab.serve")

OPEN_PATHS = ("/health",)
BIG_BYTES = 1_000_000     # a body or /tokenize answer this large is followed by release_heap()


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer KEY` when a key is set (the scheme
    in any case, as RFC 7235 has it)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"),
                                                                     self.key.encode("utf-8")):
                msg = "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
                await JSONResponse(error_body(msg, "invalid_request_error", None, "invalid_api_key"),
                                   status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before anything parses it (a declared
    Content-Length is refused at once; a chunked body is counted as it arrives). The rest of an oversized body
    is read and dropped, up to a bound, so the client sees the 413 rather than a reset connection."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def _refuse(self, scope, receive, send, more: bool) -> None:
        dropped = 0
        while more and dropped < 64 * self.limit:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            dropped += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        msg = f"The request body is larger than this server's limit of {self.limit} bytes (--max-request-bytes)."
        await JSONResponse(error_body(msg, "invalid_request_error", None, "request_too_large"),
                           status_code=413)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, True)
            return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return          # the client went away
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                await self._refuse(scope, receive, send, more)
                return
        body, replayed = b"".join(chunks), False
        del chunks

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        try:
            await self.app(scope, replay, send)
        finally:
            if len(body) > BIG_BYTES:   # parsing it left freed heap behind: give it back, off the event loop
                del body
                await asyncio.to_thread(release_heap)


class _Job:
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

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(served: ServedModel, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="tunelab serve", version="1", docs_url="/docs", redoc_url=None)
    app.state.served = served
    engine = served.engine
    tok = served.tokenizer

    # errors --------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errs = exc.errors()
        # of the errors a union reports (one per member it tried), the deepest is the member the input meant
        first = max(errs, key=lambda e: len(e.get("loc", ()))) if errs else {"loc": (), "msg": "invalid request"}
        # union members add tags such as "function-after[...]" or "list[ContentPart]" to the location
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not (isinstance(x, str) and "[" in x)]
        if first.get("type") == "json_invalid":
            msg, param = "We could not parse the JSON body of your request (invalid JSON).", None
        elif first.get("type") == "missing" and not loc:
            msg, param = "The request needs a JSON body.", None
        else:
            param = ".".join(loc) or None
            msg = f"Invalid value for '{param}': {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(msg, "invalid_request_error", param, None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, code),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        log.exception("request failed")     # the log keeps the details; the body names no internals
        return JSONResponse(error_body("internal server error (the server log has the details)", "server_error"),
                            status_code=500)

    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    if api_key:
        app.add_middleware(BearerAuth, key=api_key)     # added last: runs first

    # helpers -------------------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name and name != served.name:
            raise APIError(404, f"The model '{name}' does not exist; this server has '{served.name}'.",
                           param="model", code="model_not_found")

    def check_length(n_prompt: int, max_tokens: int, param: str) -> None:
        ctx = served.context_len
        if n_prompt == 0:
            raise APIError(400, "The prompt is empty.", param=param)
        if n_prompt + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                                f"completion). Please reduce the length of the prompt or the completion.",
                           param=param, code="context_length_exceeded")

    def check_chars(chars: int, param: str) -> None:
        """Refuse, before tokenising it, text that no number of tokens within the context could hold."""
        if served.too_long(chars):
            raise APIError(400, f"This model's maximum context length is {served.context_len} tokens; the "
                                f"{param} has {chars} characters, more than that many tokens can hold. Please "
                                f"reduce the length of the {param}.", param=param, code="context_length_exceeded")

    def check_sequences(prompts: int, n: int, param: str) -> None:
        if prompts * n > limits.max_sequences:
            raise APIError(400, f"This request asks for {prompts} prompt(s) × n={n} = {prompts * n} sequences; "
                                f"this server takes at most {limits.max_sequences} per request "
                                f"(--max-sequences).", param=param)

    def check_ids(ids: list[int]) -> None:
        bad = [i for i in ids if i < 0 or i >= engine.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range (vocabulary size {engine.vocab_size})",
                           param="prompt")

    defaults = served.defaults

    def default_max_tokens(room: int, fallback: int) -> int:
        """max_tokens left out: the model's default, else `fallback`, within the `room` the context leaves."""
        return max(min(defaults.max_tokens or fallback, room), 0)

    def params_for(req, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None, seq_seed: int | None):
        return SamplingParams(max_tokens=max_tokens, **served.sampling(req.temperature, req.top_p, req.top_k),
                              stop=req.stop_list(), seed=seq_seed, logprobs=logprobs,
                              prompt_logprobs=prompt_logprobs, ignore_eos=req.ignore_eos)

    def seed_for(req, j: int) -> int | None:
        return None if req.seed is None else req.seed + j

    def start(job: _Job, prompts: list[list[int]], make_params) -> None:
        """Submit n sequences per prompt; choice index = prompt * n + j (OpenAI's order)."""
        for p, ids in enumerate(prompts):
            for j in range(job.n):
                idx = p * job.n + j
                job.seqs.append(Sequence(ids, make_params(p, j), job.callback, index=idx))
                job.logprobs[idx] = []
        engine.submit(job.seqs)

    async def collect(job: _Job, request: Request) -> None:
        """Wait for every sequence to finish; a client that goes away cancels its sequences."""
        remaining = len(job.seqs)
        try:
            while remaining:
                try:
                    out = await asyncio.wait_for(job.queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        raise APIError(499, "client closed the request") from None
                    continue
                job.logprobs[out.seq.index].extend(out.logprobs)
                if out.finish_reason is not None:
                    remaining -= 1
                    if out.finish_reason == "error":
                        raise APIError(500, out.error or "generation failed", type="server_error")
        finally:
            job.cancel()

    def top_dict(entry: TokenLogprob) -> dict[str, float] | None:
        if entry.logprob is None:
            return None
        d = {served.token_str(i): lp for i, lp in entry.top}
        d.setdefault(served.token_str(entry.token_id), entry.logprob)
        return d

    def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict:
        tokens = [served.token_str(e.token_id) for e in entries]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [top_dict(e) for e in entries], "text_offset": offsets}

    def chat_logprobs(entries: list[TokenLogprob]) -> dict:
        def item(i: int, lp: float) -> dict:
            s = served.token_str(i)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(i, lp) for i, lp in e.top]}
                            for e in entries]}

    def usage(job: _Job, prompts: list[list[int]]) -> dict:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(s.num_generated for s in job.seqs)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def streaming(gen: AsyncIterator[str]):
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # routes --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tunelab",
                "max_model_len": served.context_len}

    @app.get("/stats")
    async def stats():
        s = dict(engine.stats)
        s["mean_batch"] = s["batch_rows_sum"] / s["steps"] if s["steps"] else 0.0
        s["max_batch_limit"] = engine.max_batch
        return s

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        check_sequences(1, req.n, "n")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            prompt_text = await served.off_loop(served.render_chat, messages, req.add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception(), e.g. roles out of order
            log.info("chat template refused the messages: %s", e)
            raise APIError(400, f"cannot format these messages with the model's chat template: {e}",
                           param="messages") from None
        check_chars(len(prompt_text), "messages")
        ids = await served.off_loop(served.encode, prompt_text, False)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is None:
            room = served.context_len - len(ids)
            max_tokens = default_max_tokens(room, room)
            if max_tokens == 0:
                check_length(len(ids), 1, "messages")
        check_length(len(ids), max_tokens, "messages")
        lp = (req.top_logprobs or 0) if req.logprobs else None
        job = _Job(asyncio.get_running_loop(), req.n)
        start(job, [ids], lambda p, j: params_for(req, max_tokens, lp, None, seed_for(req, j)))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": served.name}

        if not req.stream:
            await collect(job, request)
            choices = [{"index": s.index, "message": {"role": "assistant", "content": s.text},
                        "logprobs": chat_logprobs(job.logprobs[s.index]) if lp is not None else None,
                        "finish_reason": s.finish_reason} for s in job.seqs]
            return {**head, "choices": choices, "usage": usage(job, [ids])}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunk = {**head, "object": "chat.completion.chunk"}

        async def events():
            try:
                for s in job.seqs:
                    yield _sse({**chunk, "choices": [{"index": s.index, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}]})
                remaining = len(job.seqs)
                while remaining:
                    out = await job.queue.get()
                    if out.finish_reason == "error":
                        yield _sse(error_body(out.error or "generation failed", "server_error"))
                        break
                    if out.text or out.logprobs:
                        yield _sse({**chunk, "choices": [{
                            "index": out.seq.index, "delta": {"content": out.text},
                            "logprobs": chat_logprobs(out.logprobs) if lp is not None else None,
                            "finish_reason": None}]})
                    if out.finish_reason is not None:
                        remaining -= 1
                        yield _sse({**chunk, "choices": [{"index": out.seq.index, "delta": {}, "logprobs": None,
                                                          "finish_reason": out.finish_reason}]})
                if include_usage:
                    yield _sse({**chunk, "choices": [], "usage": usage(job, [ids])})
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()   # the client went away (or we are done): free the engine slots

        return streaming(events())

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        raw = req.prompts()
        check_sequences(len(raw), req.n, "prompt" if len(raw) > 1 else "n")
        for p in raw:
            if isinstance(p, str):
                check_chars(len(p), "prompt")
            else:
                check_ids(p)
                check_length(len(p), req.max_tokens or 0, "prompt")

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
                check_length(len(ids), 0, "prompt")
            else:
                check_length(len(ids), max_tokens, "prompt")
        prompt_lp = req.logprobs if (req.echo and req.logprobs is not None) else None
        job = _Job(asyncio.get_running_loop(), req.n)

        def make(p: int, j: int) -> SamplingParams:
            limit = max_tokens if max_tokens is not None else default_max_tokens(
                served.context_len - len(prompts[p]), 16)
            return params_for(req, limit, req.logprobs, prompt_lp, seed_for(req, j))
        start(job, prompts, make)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}

        def prompt_of(s: Sequence) -> int:
            return s.index // job.n

        if not req.stream:
            await collect(job, request)
            choices = []
            for s in job.seqs:
                p = prompt_of(s)
                text = (texts[p] + s.text) if req.echo else s.text
                lpobj = None
                if req.logprobs is not None:
                    entries = (s.prompt_logprobs or []) + job.logprobs[s.index] if req.echo else job.logprobs[s.index]
                    lpobj = completion_logprobs(entries, 0 if req.echo else len(texts[p]))
                choices.append({"index": s.index, "text": text, "logprobs": lpobj, "finish_reason": s.finish_reason})
            return {**head, "choices": choices, "usage": usage(job, prompts)}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            try:
                echoed: set[int] = set()
                offsets = {s.index: 0 if req.echo else len(texts[prompt_of(s)]) for s in job.seqs}
                remaining = len(job.seqs)
                while remaining:
                    out = await job.queue.get()
                    s = out.seq
                    if out.finish_reason == "error":
                        yield _sse(error_body(out.error or "generation failed", "server_error"))
                        break
                    text, entries = out.text, list(out.logprobs)
                    if req.echo and s.index not in echoed:
                        echoed.add(s.index)
                        text = texts[prompt_of(s)] + text
                        entries = (s.prompt_logprobs or []) + entries
                    lpobj = None
                    if req.logprobs is not None:
                        lpobj = completion_logprobs(entries, offsets[s.index])
                        offsets[s.index] += sum(len(t) for t in lpobj["tokens"])
                    if out.finish_reason is not None:
                        remaining -= 1
                    yield _sse({**head, "choices": [{"index": s.index, "text": text, "logprobs": lpobj,
                                                     "finish_reason": out.finish_reason}]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(job, prompts)})
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()

        return streaming(events())

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        if req.messages is None and req.prompt is None:
            raise APIError(400, "give 'prompt' or 'messages'", param="prompt")

        def run() -> bytes:
            if req.messages is not None:
                text = served.render_chat([{"role": m.role, "content": m.text()} for m in req.messages],
                                          req.add_generation_prompt)
                ids = served.encode(text, add_special_tokens=False)
            else:
                ids = served.encode(req.prompt, add_special_tokens=req.add_special_tokens)
            body = {"count": len(ids), "max_model_len": served.context_len, "tokens": ids,
                    "token_strs": [served.token_str(i) for i in ids]}
            return json.dumps(body, ensure_ascii=False).encode("utf-8")    # encoded here, not on the event loop

        def run_and_release() -> bytes:
            data = run()
            if len(data) > BIG_BYTES:   # its tokens, strings and encoding are freed by now
                release_heap()
            return data
        try:
            return Response(await served.off_loop(run_and_release), media_type="application/json")
        except Exception as e:  # noqa: BLE001 - a template's raise_exception()
            if req.messages is None:
                raise
            log.info("chat template refused the messages: %s", e)
            raise APIError(400, f"cannot format these messages with the model's chat template: {e}",
                           param="messages") from None

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        check_ids(req.tokens)
        return {"prompt": await served.off_loop(served.decode, req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "unk_token": tok.unk_token, "eos_token_id": tok.eos_token_id,
                "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
                "chat_template": tok.chat_template, "model_max_length": served.context_len,
                "vocab_size": engine.vocab_size}

    return app


class BackgroundServer:
    """uvicorn in a daemon thread on a loopback port (port 0: any free one); for tests, benchmarks and the UI."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="tunelab-uvicorn", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def api_key_of(flag: str | None) -> str | None:
    """The key from --api-key, else TUNELAB_API_KEY; an empty one is refused (it would serve without a key)."""
    if flag is not None:
        if not flag.strip():
            raise TunelabError("--api-key is empty: give a key, or leave the option out to serve without one",
                               field="--api-key")
        return flag
    env = os.environ.get("TUNELAB_API_KEY")
    if env is not None and not env.strip():
        raise TunelabError("TUNELAB_API_KEY is set but empty: give a key, or unset it to serve without one",
                           field="TUNELAB_API_KEY")
    return env


def cli_serve(args) -> int:
    import torch
    import uvicorn

    key = api_key_of(args.api_key)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_sequences=args.max_sequences)
    if limits.max_request_bytes < 1 or limits.max_sequences < 1:
        raise TunelabError("--max-request-bytes and --max-sequences must be at least 1")
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    served = ServedModel.load(args.model, name=args.name, max_batch=args.max_batch, precision=args.precision,
                              device=args.device, which=args.checkpoint)
    app = create_app(served, api_key=key, limits=limits)
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    print(f"tunelab serve: {served.name}  ({served.model_dir}, context {served.context_len}, "
          f"batch ≤ {served.engine.max_batch})")
    print(f"  defaults for what a request leaves out: {describe_defaults(served.defaults)}")
    print(f"  OpenAI base URL: http://{host}:{args.port}/v1" + ("   (Bearer key required)" if key else ""))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        served.close()
    return 0
