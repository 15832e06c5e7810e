"""OpenAI API request schemas (the fields tunelab honours; unknown fields are ignored) and error bodies.

Every field is bounded here, at the HTTP edge, so that what reaches the engine is something it can run: a seed
within the torch generator's range, at most MAX_N choices, at most MAX_STOP stop strings of at most
MAX_STOP_CHARS characters each, finite floats, and text that is valid Unicode (a lone surrogate from a JSON
escape such as "\\ud800" cannot be encoded as UTF-8 by any tokenizer). The number of sequences a request may
start (prompts × n) and its size in bytes are the server's limits (`Limits`), checked before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from tunelab.records import lone_surrogate
from tunelab.serve.engine import MAX_LOGPROBS

MAX_N = 16
MAX_STOP = 16
MAX_STOP_CHARS = 256
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 63 - 1     # torch.Generator.manual_seed takes [-2**63, 2**64); seed + n - 1 fits


@dataclass(frozen=True)
class Limits:
    """A server's per-request limits, enforced before any tokenising or generating."""
    max_request_bytes: int = 2_000_000          # a larger body is refused with 413 before it is parsed
    max_sequences: int = 64                     # prompts × n in one request


def _valid_unicode(s: str) -> str:
    if (at := lone_surrogate(s)) is not None:
        raise ValueError(f"the text is not valid Unicode (a lone surrogate at character {at})")
    return s


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """None (left out, or null): the served model's default (`ServedModel.defaults`), else OpenAI's."""
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: Union[Text, list[Text], None] = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, not {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence has at most {MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


class ContentPart(_Request):
    type: str = "text"
    text: Text | None = None


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[Text, list[ContentPart], None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True


Prompt = Union[Text, list[Text], list[StrictInt], list[list[StrictInt]]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: Text | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list of strings and/or token-id lists."""
        p: Any = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt is empty", param="prompt")
        if isinstance(p[0], int):
            return [list(p)]
        if isinstance(p[0], list) and any(not x for x in p):
            raise APIError(400, "a token-id prompt is empty", param="prompt")
        return list(p)


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[StrictInt]
