"""One chat completion at a time per call, through the official `openai` async client, with errors sorted into
what to retry, what fails one article and what stops the run.

The client's own retries are off (`max_retries=0`): the runner's policy applies (a limit shared with invalid
replies, exponential backoff with jitter, `Retry-After` honoured). Sorting:
  retried          timeout, connection_error, rate_limited (429), server_error (5xx, 408, 409),
                   bad_response (a 200 whose body is not a chat completion)
  article failed   bad_request (other 4xx: a prompt too long for the model's context, a bad parameter)
  run stopped      401/403 (the key) and 404 (the model or the URL): every article would fail the same way
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

from tunelab.errors import TunelabError

CONNECT_TIMEOUT = 10.0


@dataclass
class Reply:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class RequestFailed(Exception):
    """A request that got no usable reply: `reason` (a counting key), whether to retry, the server's wait."""

    def __init__(self, reason: str, message: str, retry: bool, retry_after: float | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry = retry
        self.retry_after = retry_after


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


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:300]
    return str(getattr(e, "message", None) or e)[:300]


class ChatClient:
    def __init__(self, endpoint: str, model: str, api_key: str | None, timeout: float, temperature: float,
                 max_tokens: int):
        import openai
        self.openai = openai
        self.endpoint = endpoint
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        # servers without keys ignore the header; the client insists on sending one
        self.client = openai.AsyncOpenAI(base_url=endpoint, api_key=api_key or "none", max_retries=0,
                                         timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)))

    async def check(self) -> None:
        """Before any article: the endpoint answers, takes the key, and (if it lists models) serves the model."""
        o = self.openai
        try:
            ids = [m.id async for m in self.client.models.list()]
        except o.APIConnectionError as e:
            cause = e.__cause__ or e
            raise TunelabError(f"cannot reach {self.endpoint}: {cause}", field="endpoint") from e
        except (o.AuthenticationError, o.PermissionDeniedError) as e:
            raise TunelabError(f"{self.endpoint} refused the API key ({e.status_code}: {_message(e)})",
                               field="api_key") from e
        except o.APIStatusError as e:
            if e.status_code in (404, 405):      # a server without /models: the first request will tell
                return
            raise TunelabError(f"{self.endpoint}/models answered {e.status_code}: {_message(e)}",
                               field="endpoint") from e
        except o.APIError as e:
            raise TunelabError(f"{self.endpoint}/models did not answer as an OpenAI-compatible server: {e}",
                               field="endpoint") from e
        if ids and self.model not in ids:
            raise TunelabError(f"{self.endpoint} serves no model '{self.model}' (it lists: {', '.join(ids[:10])})",
                               field="model")

    async def chat(self, messages: list[dict]) -> Reply:
        o = self.openai
        try:
            r = await self.client.chat.completions.create(model=self.model, messages=messages,
                                                          temperature=self.temperature, max_tokens=self.max_tokens)
        except o.APITimeoutError as err:
            raise RequestFailed("timeout", "no reply in time", retry=True) from err
        except o.APIConnectionError as e:
            raise RequestFailed("connection_error", str(e.__cause__ or e), retry=True) from e
        except o.APIStatusError as e:
            status, msg = e.status_code, _message(e)
            if status in (401, 403):
                raise TunelabError(f"{self.endpoint} refused the API key ({status}: {msg})",
                                   field="api_key") from e
            if status == 404:
                raise TunelabError(f"{self.endpoint}: not found (404: {msg})", field="model") from e
            wait = retry_after_seconds(e.response.headers)
            if status == 429:
                raise RequestFailed("rate_limited", msg, retry=True, retry_after=wait) from e
            if status >= 500 or status in (408, 409):
                raise RequestFailed("server_error", f"{status}: {msg}", retry=True, retry_after=wait) from e
            raise RequestFailed("bad_request", f"{status}: {msg}", retry=False) from e
        except o.APIError as e:
            raise RequestFailed("bad_response", str(e)[:300], retry=True) from e
        choices = getattr(r, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise RequestFailed("bad_response", "the reply holds no choices", retry=True)
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        usage = getattr(r, "usage", None)
        return Reply(text if isinstance(text, str) else None, getattr(choices[0], "finish_reason", None),
                     getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))

    async def close(self) -> None:
        await self.client.close()
