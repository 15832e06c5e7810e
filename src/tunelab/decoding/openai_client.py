"""The one client tunelab talks to an OpenAI-compatible server with (a teammate's `tunelab serve`, vLLM, LM Studio,
Ollama, a hosted API): the model judge, `tunelab synth`, the UI's remote models (and the vLLM engine) all go
through `Endpoint`, over the official `openai` package (sync and async), so they share one retry policy and one
error rule.

The retry policy (`RetryPolicy`; the `openai` client's own retries are off):
  retried          timeout, connection_error (refused, reset, DNS), rate_limited (429), server_error (5xx, and 408
                   and 409, which `openai` retries too), bad_response (a 200 whose body is not what the API says)
  not retried      bad_request (other 4xx: a prompt too long for the model's context, a bad parameter: that request
                   alone), refused_key (401, 403), not_found (404: the URL or the model; every request would fail
                   the same way)
  how often        `retries` extra attempts (2 unless the caller says: `tunelab synth --retries`), waiting
                   `backoff` seconds doubling with jitter (at most `max_backoff`), or what the server's
                   `Retry-After` asks (at most `max_retry_after`). A probe (the model list a caller checks before
                   it starts, the UI's status) is asked once: it is there to say fast that a URL or key is wrong.
The error rule: every failure is one `EndpointError`, a `TunelabError` whose message names the endpoint's URL
and what failed (`cannot reach URL (…)`, `URL refused the API key (401: …)`, `URL answered 503: … (after 3
attempts)`), with `reason` (the words above), `status` and `attempts` for a caller that counts or decides what
one failure stops. A user's bad URL, key or model is never a traceback.

Importing this module imports neither torch nor `openai` (only a request does).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tunelab.errors import TunelabError

RETRIED = frozenset({"timeout", "connection_error", "rate_limited", "server_error", "bad_response"})
CONNECT_TIMEOUT = 10.0      # seconds to open a connection, unless a caller says (the UI's --connect-timeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How many extra attempts a retried failure (`RETRIED`) gets, and how long to wait before each."""
    retries: int = 2
    backoff: float = 1.0            # seconds before the first retry, doubling
    max_backoff: float = 60.0       # the longest wait of the exponential backoff
    max_retry_after: float = 600.0  # the longest Retry-After honoured

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (1 = the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class EndpointError(TunelabError):
    """A request to an OpenAI-compatible endpoint that got no usable reply; the message names the URL."""

    def __init__(self, message: str, *, url: str, reason: str, status: int | None = None,
                 retry_after: float | None = None, field: str = "endpoint"):
        super().__init__(message, field=field)
        self.url, self.reason, self.status, self.retry_after = url, reason, status, retry_after
        self.attempts = 1

    @property
    def retried(self) -> bool:
        """Whether the policy asks again after this failure."""
        return self.reason in RETRIED

    def after(self, attempts: int) -> EndpointError:
        self.attempts = attempts
        if attempts > 1:
            self.message += f" (after {attempts} attempts)"
            self.args = (str(self),)
        return self


@dataclass
class ChatReply:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int = 1


def retry_after_seconds(headers) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:300]
    return (str(getattr(e, "message", None) or e).splitlines() or [type(e).__name__])[0][:300]


def _openai():
    try:
        import openai
    except ImportError as err:
        raise TunelabError("talking to an OpenAI-compatible endpoint needs the openai client: "
                           "pip install 'tunelab[serve]'") from err
    return openai


class Endpoint:
    """One OpenAI-compatible server at `base_url` (…/v1). `timeout`: seconds a reply (or, streaming, the next
    piece of one) may take; `connect_timeout`: seconds to open a connection. The sync and async `openai` clients
    are made on first use; `close` / `aclose` release them."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0,
                 connect_timeout: float = CONNECT_TIMEOUT, policy: RetryPolicy = RetryPolicy()):
        self.url = base_url.rstrip("/")
        self.api_key = api_key or "none"    # servers without keys ignore the header; the client insists on one
        self.timeout, self.connect_timeout, self.policy = timeout, min(connect_timeout, timeout), policy
        self.openai = _openai()
        self._sync = self._async = None

    # --- the clients ----------------------------------------------------------------------------------------
    def _options(self, timeout: float | None) -> dict:
        t = self.timeout if timeout is None else timeout
        return {"base_url": self.url, "api_key": self.api_key, "max_retries": 0,
                "timeout": self.openai.Timeout(t, connect=min(self.connect_timeout, t))}

    def client(self, timeout: float | None = None):
        if self._sync is None:
            self._sync = self.openai.OpenAI(**self._options(None))
        return self._sync if timeout is None else self._sync.with_options(timeout=self._options(timeout)["timeout"])

    def async_client(self, timeout: float | None = None):
        if self._async is None:
            self._async = self.openai.AsyncOpenAI(**self._options(None))
        return self._async if timeout is None else self._async.with_options(timeout=self._options(timeout)["timeout"])

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.close()

    # --- the error rule -------------------------------------------------------------------------------------
    def error(self, e: BaseException, timeout: float | None = None) -> EndpointError:
        """`e` (an `openai` error, or anything a reply's parsing raised) as the one error, naming the URL."""
        if isinstance(e, EndpointError):
            return e
        o, url = self.openai, self.url
        if isinstance(e, o.APITimeoutError):
            t = self.timeout if timeout is None else timeout
            return EndpointError(f"{url} did not answer in time (connect {min(self.connect_timeout, t):g} s, "
                                 f"reply {t:g} s)", url=url, reason="timeout")
        if isinstance(e, o.APIConnectionError):
            cause = e.__cause__ or e
            return EndpointError(f"cannot reach {url} ({type(cause).__name__}: {cause})", url=url,
                                 reason="connection_error")
        if isinstance(e, o.APIStatusError):
            status, msg = e.status_code, _server_message(e)
            if status in (401, 403):
                return EndpointError(f"{url} refused the API key ({status}: {msg})", url=url, reason="refused_key",
                                     status=status, field="api_key")
            if status == 404:
                return EndpointError(f"{url}: not found (404: {msg}); check the URL (it usually ends in /v1) and "
                                     f"the model", url=url, reason="not_found", status=status, field="model")
            wait = retry_after_seconds(e.response.headers)
            if status == 429:
                return EndpointError(f"{url} is limiting the rate (429: {msg})", url=url, reason="rate_limited",
                                     status=status, retry_after=wait)
            if status >= 500 or status in (408, 409):
                return EndpointError(f"{url} answered {status}: {msg}", url=url, reason="server_error",
                                     status=status, retry_after=wait)
            return EndpointError(f"{url} rejected the request ({status}: {msg})", url=url, reason="bad_request",
                                 status=status)
        detail = (str(e).splitlines() or [""])[0][:300]
        return EndpointError(f"{url} did not answer as an OpenAI-compatible server ({type(e).__name__}: {detail})",
                             url=url, reason="bad_response")

    def _failed(self, e: BaseException, attempt: int, retries: int, timeout: float | None,
                on_retry: Callable[[EndpointError, float], None] | None) -> float:
        """The wait before the next attempt; raises the error when the policy stops here."""
        err = self.error(e, timeout)
        if not err.retried or attempt > retries:
            raise err.after(attempt) from (None if e is err else e)
        wait = self.policy.delay(attempt, err.retry_after)
        if on_retry is not None:
            try:
                on_retry(err, wait)
            except EndpointError as stop:   # the caller stops here (a deadline the wait would pass)
                raise (err.after(attempt) if stop is err else stop) from (None if e is err else e)
        return wait

    def _call(self, request: Callable[[], Any], retries: int | None, timeout: float | None = None,
              on_retry=None) -> tuple[Any, int]:
        retries = self.policy.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            try:
                return request(), attempt
            except (self.openai.OpenAIError, EndpointError, ValueError) as e:  # ValueError: a body not JSON
                time.sleep(self._failed(e, attempt, retries, timeout, on_retry))

    async def _acall(self, request: Callable[[], Any], retries: int | None, timeout: float | None = None,
                     on_retry=None) -> tuple[Any, int]:
        retries = self.policy.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            try:
                return await request(), attempt
            except (self.openai.OpenAIError, EndpointError, ValueError) as e:
                await asyncio.sleep(self._failed(e, attempt, retries, timeout, on_retry))

    # --- chat -----------------------------------------------------------------------------------------------
    def _reply(self, r) -> ChatReply:
        choices = getattr(r, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise EndpointError(f"{self.url} did not answer as an OpenAI-compatible server (the reply holds no "
                                f"choices)", url=self.url, reason="bad_response")
        text = getattr(getattr(choices[0], "message", None), "content", None)
        usage = getattr(r, "usage", None)
        return ChatReply(text if isinstance(text, str) else None, getattr(choices[0], "finish_reason", None),
                         getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))

    def chat(self, messages: list[dict], *, model: str, retries: int | None = None,
             on_retry: Callable[[EndpointError, float], None] | None = None, **params) -> ChatReply:
        """One chat completion (`params`: temperature, max_tokens, … as the API names them), retried by the
        policy (`retries` extra attempts, the policy's unless given; `on_retry(error, wait)` before each, which
        may raise the error to stop there)."""
        def request():
            return self._reply(self.client().chat.completions.create(model=model, messages=messages, **params))
        reply, attempts = self._call(request, retries, on_retry=on_retry)
        reply.attempts = attempts
        return reply

    async def achat(self, messages: list[dict], *, model: str, retries: int | None = None,
                    on_retry: Callable[[EndpointError, float], None] | None = None, **params) -> ChatReply:
        """`chat` for asyncio: many at once share one connection pool."""
        async def request():
            return self._reply(await self.async_client().chat.completions.create(model=model, messages=messages,
                                                                                  **params))
        reply, attempts = await self._acall(request, retries, on_retry=on_retry)
        reply.attempts = attempts
        return reply

    def chat_stream(self, messages: list[dict], *, model: str, retries: int | None = None,
                    on_retry: Callable[[EndpointError, float], None] | None = None, **params) -> ChatStream:
        """A streamed chat completion, opened under the policy as `chat` is (a failure before the reply's
        headers is retried; once it streams, nothing is asked again)."""
        stream, _ = self._call(lambda: self.client().chat.completions.create(
            model=model, messages=messages, stream=True, **params), retries, on_retry=on_retry)
        return ChatStream(self, stream)

    # --- completions ----------------------------------------------------------------------------------------
    async def acompletion_stream(self, *, retries: int | None = None, **params):
        """A streamed text completion (`params` as the API names them, a server's own fields in `extra_body`:
        vLLM's token-id prompts and `return_token_ids`), opened under the policy as `chat_stream` is (a failure
        before the reply's headers is retried; once it streams, nothing is asked again): the `openai` package's
        async stream of chunks, whose `close()` ends the request (vLLM then aborts it)."""
        async def request():
            return await self.async_client().completions.create(stream=True, **params)
        stream, _ = await self._acall(request, retries)
        return stream

    # --- a server's own routes ------------------------------------------------------------------------------
    def post(self, path: str, body: dict, *, retries: int | None = None, timeout: float | None = None) -> Any:
        """POST `body` to `path` under the base URL (a route the `openai` package has no method for, or one it
        would reshape: vLLM's `/completions` with token-id prompts and its own fields, `/load_lora_adapter`),
        under the same policy and errors: the reply's JSON, or its text when it is not JSON."""
        reply, _ = self._call(lambda: self.client(timeout).post(path, cast_to=object, body=body), retries, timeout)
        return reply

    # --- models ---------------------------------------------------------------------------------------------
    def models(self, *, retries: int | None = None, timeout: float | None = None) -> list[str]:
        """The ids the server lists (GET /models)."""
        listing, _ = self._call(lambda: [m.id for m in self.client(timeout).models.list()], retries, timeout)
        return listing

    async def amodels(self, *, retries: int | None = None, timeout: float | None = None) -> list[str]:
        async def request():
            return [m.id async for m in self.async_client(timeout).models.list()]
        listing, _ = await self._acall(request, retries, timeout)
        return listing

    def _serves(self, ids: list[str], model: str) -> None:
        if ids and model not in ids:
            raise EndpointError(f"{self.url} serves no model '{model}' (it lists: {', '.join(ids[:10])})",
                                url=self.url, reason="not_found", field="model")

    def check(self, model: str) -> None:
        """Before any work, asked once: the endpoint answers, takes the key and (if it lists models) serves
        `model`. A server without GET /models (404, 405) passes: its first request will tell."""
        try:
            ids = self.models(retries=0)
        except EndpointError as e:
            if e.status in (404, 405):
                return
            raise
        self._serves(ids, model)

    async def acheck(self, model: str) -> None:
        """`check` for asyncio."""
        try:
            ids = await self.amodels(retries=0)
        except EndpointError as e:
            if e.status in (404, 405):
                return
            raise
        self._serves(ids, model)


class ChatStream:
    """The text pieces of a streamed chat completion. `close` may be called from another thread, to end a
    reply that trickles past a caller's deadline. A stream with no event in the API's format is a
    `bad_response`; a failure while reading is the endpoint's error too."""

    def __init__(self, endpoint: Endpoint, stream):
        self.endpoint, self.stream = endpoint, stream

    def __iter__(self) -> Iterator[str]:
        events = 0
        try:
            for chunk in self.stream:
                events += 1
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice, "delta", None)
                    if delta is not None and delta.content:
                        yield delta.content
        except Exception as e:  # noqa: BLE001 - openai's errors, a body not JSON, a connection cut mid-stream
            raise self.endpoint.error(e) from e
        if events == 0:
            raise EndpointError(f"{self.endpoint.url} sent no answer in the OpenAI streaming format",
                                url=self.endpoint.url, reason="bad_response")

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 - closing from another thread is best effort
            pass

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
