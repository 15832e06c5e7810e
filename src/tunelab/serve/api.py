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

This module is the router, as vLLM's OpenAI entrypoint is: `create_app` installs the middlewares
(middleware.py) and the error handlers, and each route hands its request to the serving class of its family
(serving_chat.py, serving_completion.py, serving_models.py, serving_tokenization.py; what they share is in
serving.py). A route holds no serving logic, so a change to how a request is served is made in one place.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from tunelab.serve import require_extra

require_extra("fastapi", "uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from tunelab.errors import TunelabError  # noqa: E402
from tunelab.serve.middleware import BearerAuth, BodyLimit  # noqa: E402
from tunelab.serve.models import ServedModel, ServedModels  # noqa: E402
from tunelab.serve.protocol import (APIError,  # noqa: E402
                                    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, Limits,
                                    TokenizeRequest, error_body)
from tunelab.serve.serving_chat import OpenAIServingChat  # noqa: E402
from tunelab.serve.serving_completion import OpenAIServingCompletion  # noqa: E402
from tunelab.serve.serving_models import OpenAIServingModels  # noqa: E402
from tunelab.serve.serving_tokenization import OpenAIServingTokenization  # noqa: E402

log = logging.getLogger("tunelab.serve")


# errors: every one answered with OpenAI's body ------------------------------------------------------------
async def _api_error(request, exc: APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


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


async def _http_error(request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, code),
                        status_code=exc.status_code)


async def _server_error(request, exc: Exception):
    log.exception("request failed")     # the log keeps the details; the body names no internals
    return JSONResponse(error_body("internal server error (the server log has the details)", "server_error"),
                        status_code=500)


def create_app(served: ServedModel | ServedModels, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The app over one model, or over several by name (`ServedModels`: a run's base and checkpoints through
    vLLM); a request's `model` picks one, none the default. Every model gets the same limits, key and checks."""
    app = FastAPI(title="tunelab serve", version="1", docs_url="/docs", redoc_url=None)
    all_models = served if isinstance(served, ServedModels) else ServedModels([served])
    served = all_models.default
    app.state.served = served
    app.state.models = all_models
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    if api_key:
        app.add_middleware(BearerAuth, key=api_key)     # added last: runs first

    models = OpenAIServingModels(served, limits, list(all_models))
    # each model its own serving classes: a request is served by the ones of the model it names
    chats = {m.name: OpenAIServingChat(m, limits) for m in all_models}
    completions_ = {m.name: OpenAIServingCompletion(m, limits) for m in all_models}
    tokenizations = {m.name: OpenAIServingTokenization(m, limits) for m in all_models}

    def pick(table: dict, name: str | None):
        """The serving class of the model `name` (none: the default); with one model, an unknown name gets that
        model's own 404 (its check_model), with several a 404 naming them."""
        if name and name in table:
            return table[name]
        if not name or len(table) == 1:
            return table[served.name]
        raise APIError(404, f"The model '{name}' does not exist; this server has "
                            f"{', '.join(repr(n) for n in table)}.", param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        return models.health()

    @app.get("/v1/models")
    async def list_models():
        return models.list_models()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return models.show_model(model_id)

    @app.get("/stats")
    async def stats():
        return models.stats()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        return await pick(chats, req.model).create_chat_completion(req, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await pick(completions_, req.model).create_completion(req, request)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        return await pick(tokenizations, req.model).tokenize(req)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        return await pick(tokenizations, req.model).detokenize(req)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return tokenizations[served.name].tokenizer_info()

    return app


class BackgroundServer:
    """uvicorn in a daemon thread on a loopback port (port 0: any free one); for tests, benchmarks and the UI.

    It leaves the host process's logging as it is (`log_config=None`): uvicorn's own config is a
    `logging.config.dictConfig`, which would reset the logging of the run, benchmark or test it serves in and close
    every handler that process has made."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                     timeout_graceful_shutdown=2, log_config=None)
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


def api_key_of(given: str | None) -> str | None:
    """The key given, else TUNELAB_API_KEY; an empty one is refused (it would serve without a key)."""
    if given is not None:
        if not given.strip():
            raise TunelabError("the API key is empty: give a key, or leave it out to serve without one",
                               field="api_key")
        return given
    env = os.environ.get("TUNELAB_API_KEY")
    if env is not None and not env.strip():
        raise TunelabError("TUNELAB_API_KEY is set but empty: give a key, or unset it to serve without one",
                           field="TUNELAB_API_KEY")
    return env
