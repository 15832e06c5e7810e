"""Chat backends for the web UI: a local tunelab model (its engine runs in-process) or any OpenAI-compatible
endpoint (a teammate's `tunelab serve`, vLLM, LM Studio, Ollama), talked to with the official `openai` client.

Model specs on the command line (`tunelab ui --model SPEC`):
  NAME=PATH                            a run directory, checkpoint, model or adapter directory
  NAME=http://host:port/v1             a remote server (its first model from /v1/models)
  NAME=http://host:port/v1#MODEL_ID    a named model on a server that has several
  NAME=URL@KEY  or  NAME=URL@env:VAR   with an API key (given, or read from environment variable VAR)
  PATH or URL                          NAME derived from the path / host
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Iterator
from urllib.parse import urlparse

from tunelab.errors import TunelabError

CONNECT_TIMEOUT = 3.0      # seconds to reach a remote server before it is reported unreachable
READ_TIMEOUT = 120.0       # seconds between two streamed chunks


class BackendError(Exception):
    """A model could not answer (unreachable, HTTP error, context too long); the message is shown in the UI."""


@dataclass
class GenerationSettings:
    """One answer's decoding. These defaults are the UI's for a model that states none (`defaults()`)."""
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()


@dataclass
class ModelSpec:
    name: str
    target: str               # a local path or a base URL
    key: str | None = None
    model_id: str | None = None

    @property
    def remote(self) -> bool:
        return self.target.startswith(("http://", "https://"))


def parse_model_spec(spec: str) -> ModelSpec:
    name, sep, target = spec.partition("=")
    if not sep or name.startswith(("http://", "https://")) or "/" in name:
        name, target = "", spec
    target = target.strip()
    key = model_id = None
    if target.startswith(("http://", "https://")):
        head, at, tail = target.rpartition("@")
        if at and "/" not in tail:          # URL@KEY (an '@' inside user:pass@host is followed by '/')
            target, key = head, tail
            if key.startswith("env:"):
                var = key[4:]
                key = os.environ.get(var)
                if not key:
                    raise TunelabError(f"environment variable {var} (API key for {spec}) is not set",
                                       field="--model")
        target, _, model_id = target.partition("#")
        model_id = model_id or None
        if not name:
            u = urlparse(target)
            name = model_id or (f"{u.hostname}:{u.port}" if u.port else (u.hostname or target))
    elif not name:
        from tunelab.serve.models import default_name, resolve_model_dir
        name = default_name(target, resolve_model_dir(target))
    if not name:
        raise TunelabError(f"cannot tell a model name from '{spec}' (use NAME=PATH_OR_URL)", field="--model")
    return ModelSpec(name, target, key, model_id)


class LocalBackend:
    """A tunelab model served in-process through the batching engine."""

    remote = False

    def __init__(self, name: str, served):
        self.name = name
        self.served = served

    def describe(self) -> str:
        return f"local · {self.served.model_dir}"

    def check(self) -> tuple[bool, str]:
        return True, f"ready · context {self.served.context_len}"

    def defaults(self, fallback: GenerationSettings) -> GenerationSettings:
        """The model's generation config (greedy for a checkpoint scored greedily), `fallback` where it says
        nothing."""
        d = self.served.defaults
        return replace(fallback, **{k: v for k, v in (("temperature", d.temperature), ("top_p", d.top_p),
                                                       ("top_k", d.top_k), ("max_tokens", d.max_tokens))
                                    if v is not None})

    def chat_stream(self, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        from tunelab.serve.engine import SamplingParams
        ids = self.served.encode(self.served.render_chat(messages), add_special_tokens=False)
        room = self.served.context_len - len(ids)
        if room <= 0:
            raise BackendError(f"{self.name}: the conversation ({len(ids)} tokens) does not fit the model's context "
                               f"of {self.served.context_len}; press Clear / 对话过长，请清空")
        params = SamplingParams(max_tokens=min(int(settings.max_tokens), room), temperature=float(settings.temperature),
                                top_p=float(settings.top_p), top_k=int(settings.top_k or 0),
                                stop=tuple(s for s in settings.stop if s))
        for out in self.served.engine.stream(ids, params):
            if out.finish_reason == "error":
                raise BackendError(f"{self.name}: {out.error}")
            if out.text:
                yield out.text


class RemoteBackend:
    """Any OpenAI-compatible server; unreachable servers fail within CONNECT_TIMEOUT seconds."""

    remote = True

    def __init__(self, name: str, base_url: str, key: str | None = None, model_id: str | None = None):
        import httpx
        import openai
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "none", max_retries=0,
                                    timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))

    def describe(self) -> str:
        return f"remote · {self.base_url}" + (f" #{self.model_id}" if self.model_id else "")

    def _error(self, e: Exception) -> BackendError:
        o = self._openai
        if isinstance(e, (o.APIConnectionError, o.APITimeoutError)):
            return BackendError(f"{self.name} is unreachable at {self.base_url} ({type(e).__name__}) / 无法连接")
        if isinstance(e, o.AuthenticationError):
            return BackendError(f"{self.name}: the server refused the API key (401) / API key 错误")
        if isinstance(e, o.APIStatusError):
            return BackendError(f"{self.name}: HTTP {e.status_code}: {getattr(e, 'message', e)}")
        return BackendError(f"{self.name}: {type(e).__name__}: {e}")

    def _resolve_model(self) -> str:
        if self.model_id is None:
            try:
                models = self.client.with_options(timeout=CONNECT_TIMEOUT + 2).models.list()
            except Exception as e:  # noqa: BLE001
                raise self._error(e) from None
            ids = [m.id for m in models.data]
            if not ids:
                raise BackendError(f"{self.name}: the server at {self.base_url} lists no models")
            self.model_id = ids[0]
        return self.model_id

    def defaults(self, fallback: GenerationSettings) -> GenerationSettings:
        """`fallback`: the model's generation config is the remote server's business."""
        return fallback

    def check(self) -> tuple[bool, str]:
        t = time.perf_counter()
        try:
            self.client.with_options(timeout=CONNECT_TIMEOUT + 2).models.list()
        except Exception as e:  # noqa: BLE001
            return False, str(self._error(e))
        return True, f"online · {(time.perf_counter() - t) * 1000:.0f} ms"

    def chat_stream(self, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        model = self._resolve_model()
        extra = {"top_k": int(settings.top_k)} if settings.top_k else None
        try:
            stream = self.client.chat.completions.create(
                model=model, messages=messages, stream=True, temperature=float(settings.temperature),
                top_p=float(settings.top_p), max_tokens=int(settings.max_tokens),
                stop=list(settings.stop)[:4] or None, extra_body=extra)
            with stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from None


def build_backends(specs: list[str], max_batch: int = 16) -> dict[str, object]:
    """Backends by name, in the order given; one engine per distinct local model directory."""
    from tunelab.serve.models import ServedModel, resolve_model_dir
    backends: dict[str, object] = {}
    loaded: dict[str, ServedModel] = {}
    for raw in specs:
        spec = parse_model_spec(raw)
        if spec.name in backends:
            raise TunelabError(f"two models are named '{spec.name}'", field="--model")
        if spec.remote:
            backends[spec.name] = RemoteBackend(spec.name, spec.target, spec.key, spec.model_id)
        else:
            key = str(resolve_model_dir(spec.target))
            if key not in loaded:
                loaded[key] = ServedModel.load(spec.target, name=spec.name, max_batch=max_batch)
            backends[spec.name] = LocalBackend(spec.name, loaded[key])
    return backends
