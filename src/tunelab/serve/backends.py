"""Chat backends for the web UI: a local tunelab model (its engine runs in-process) or any OpenAI-compatible
endpoint (a teammate's `tunelab serve`, vLLM, LM Studio, Ollama), talked to through tunelab's one
OpenAI-compatible client (`tunelab.decoding.openai_client`).

Model specs on the command line (`tunelab ui --model SPEC`):
  NAME=PATH                            a run directory, checkpoint, model or adapter directory
  NAME=http://host:port/v1             a remote server (its first model from /v1/models)
  NAME=http://host:port/v1#MODEL_ID    a named model on a server that has several
  NAME=URL@KEY  or  NAME=URL@env:VAR   with an API key (given, or read from environment variable VAR)
  PATH or URL                          NAME derived from the path / host

A remote answer runs under three deadlines (`Deadlines`, `tunelab ui --connect-timeout/--first-token-timeout/
--deadline`): reaching the server, its first piece of text, and the whole answer. Whichever passes first ends
the answer with an error shown in the chat (a battle with it is void), and the model's status shows its last
failure. A server that answers with something other than an OpenAI stream is an error too, not an empty answer.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Iterator
from urllib.parse import urlparse

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Deadlines:
    """Seconds a remote model gets: to accept the connection, to send its first text, to finish the answer."""
    connect: float = 3.0
    first_token: float = 20.0
    overall: float = 180.0

    def __post_init__(self):
        for name in ("connect", "first_token", "overall"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise TunelabError(f"a deadline must be a positive number of seconds, not {v!r}", field=name)


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
                                       field="models")
        target, _, model_id = target.partition("#")
        model_id = model_id or None
        if not name:
            u = urlparse(target)
            name = model_id or (f"{u.hostname}:{u.port}" if u.port else (u.hostname or target))
    elif not name:
        from tunelab.convert.resolve_model import resolve_model
        from tunelab.serve.models import default_name
        name = default_name(target, resolve_model(target, field="models").path)
    if not name:
        raise TunelabError(f"cannot tell a model name from '{spec}' (use NAME=PATH_OR_URL)", field="models")
    return ModelSpec(name, target, key, model_id)


class LocalBackend:
    """A tunelab model served in-process through the batching engine."""

    remote = False

    def __init__(self, name: str, served, owner=None):
        self.name = name
        self.served = served
        self.owner = owner   # what closes with it: the `ServedModels` (and vLLM server) it is one name of

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
    """Any OpenAI-compatible server, under `Deadlines`, through the shared client (`tunelab.decoding.openai_client`:
    its retry policy, while the first-token deadline leaves time for a retry, and its errors)."""

    remote = True
    _NOTES = {"timeout": "响应超时", "connection_error": "无法连接", "refused_key": "API key 错误"}

    def __init__(self, name: str, base_url: str, key: str | None = None, model_id: str | None = None,
                 deadlines: Deadlines = Deadlines()):
        from tunelab.decoding.openai_client import Endpoint
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id
        self.deadlines = deadlines
        self.last_error: str | None = None      # the last answer's failure, for the models' status
        # a socket read waits at most the first-token deadline; the overall one is watched in chat_stream
        self.endpoint = Endpoint(self.base_url, key, timeout=deadlines.first_token, connect_timeout=deadlines.connect)

    def describe(self) -> str:
        return f"remote · {self.base_url}" + (f" #{self.model_id}" if self.model_id else "")

    def _error(self, e: Exception) -> BackendError:
        from tunelab.decoding.openai_client import EndpointError
        if isinstance(e, EndpointError):
            note = self._NOTES.get(e.reason)
            return BackendError(f"{self.name}: {e.message}" + (f" / {note}" if note else ""))
        return BackendError(f"{self.name}: {type(e).__name__}: {e}")

    def _resolve_model(self) -> str:
        if self.model_id is None:
            try:
                ids = self.endpoint.models()
            except Exception as e:  # noqa: BLE001
                raise self._error(e) from e
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
            self.endpoint.models(retries=0, timeout=min(self.deadlines.first_token, 5.0))
        except Exception as e:  # noqa: BLE001
            return False, str(self._error(e))
        ms = (time.perf_counter() - t) * 1000
        if self.last_error:
            return True, f"online · {ms:.0f} ms · last answer failed 上次回答失败: {self.last_error}"
        return True, f"online · {ms:.0f} ms"

    def chat_stream(self, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        """The answer's text pieces. The request runs on a thread of its own and this generator waits on it
        with the deadlines, so a server that trickles bytes forever cannot hold the answer past them."""
        try:
            yield from self._stream(messages, settings)
        except BackendError as e:
            self.last_error = str(e)
            raise
        self.last_error = None

    def _stream(self, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        start = time.monotonic()
        model = self._resolve_model()
        extra = {"top_k": int(settings.top_k)} if settings.top_k else None
        pieces: queue.Queue = queue.Queue()
        gone = threading.Event()
        held: dict = {}
        d = self.deadlines

        def in_time(error, wait: float) -> None:
            """A retry only while the answer is still awaited and its first-token deadline leaves room."""
            if gone.is_set() or time.monotonic() + wait >= start + min(d.first_token, d.overall):
                raise error

        def pump() -> None:
            try:
                stream = self.endpoint.chat_stream(
                    messages, model=model, on_retry=in_time, temperature=float(settings.temperature),
                    top_p=float(settings.top_p), max_tokens=int(settings.max_tokens),
                    stop=list(settings.stop)[:4] or None, extra_body=extra)
                held["stream"] = stream
                with stream:
                    for piece in stream:
                        pieces.put(("text", piece))
                        if gone.is_set():
                            return
                pieces.put(("done", None))
            except Exception as e:  # noqa: BLE001 - handed to the waiting generator
                pieces.put(("error", e))

        threading.Thread(target=pump, name=f"tunelab-remote-{self.name}", daemon=True).start()
        first = True
        try:
            while True:
                limit = min(d.first_token, d.overall) if first else d.overall
                try:
                    kind, value = pieces.get(timeout=max(start + limit - time.monotonic(), 0.0))
                except queue.Empty as err:
                    if first:
                        raise BackendError(f"{self.name}: no answer within {limit:g} s (first-token deadline) "
                                           f"/ {limit:g} 秒内没有回答") from err
                    raise BackendError(f"{self.name}: the answer did not finish within {d.overall:g} s (deadline) "
                                       f"/ {d.overall:g} 秒内未完成") from err
                if kind == "text":
                    first = False
                    yield value
                elif kind == "error":
                    raise self._error(value) from value
                else:
                    return
        finally:
            gone.set()
            stream = held.get("stream")
            if stream is not None:
                stream.close()      # from this thread: ends a read that trickles past the deadline


def build_backends(specs: list[str], max_batch: int = 16, deadlines: Deadlines = Deadlines(),
                   device: str | None = None, precision: str = "auto", engine=None) -> dict[str, object]:
    """Backends by name, in the order given; one engine per distinct local model directory, each on `device`.
    With `engine` vllm (a recipe's `EngineConfig`), a local model is served by a vLLM server instead: a run as
    NAME/base and NAME/step-N, every checkpoint an adapter of the one base (`serve.vllm_serving`), so the arena
    and side by side compare checkpoints without loading each."""
    from tunelab.convert.resolve_model import resolve_model
    from tunelab.serve.models import ServedModel
    backends: dict[str, object] = {}
    loaded: dict[str, ServedModel] = {}
    try:
        for raw in specs:
            spec = parse_model_spec(raw)
            if spec.name in backends:
                raise TunelabError(f"two models are named '{spec.name}'", field="models")
            if spec.remote:
                backends[spec.name] = RemoteBackend(spec.name, spec.target, spec.key, spec.model_id, deadlines)
            elif engine is not None and engine.kind == "vllm":
                from tunelab.serve.vllm_serving import serve_through_vllm
                group = serve_through_vllm(spec.target, engine, name=spec.name, max_batch=max_batch,
                                           precision=precision, device=device)
                for served in group:
                    if served.name in backends:
                        group.close()
                        raise TunelabError(f"two models are named '{served.name}'", field="models")
                    backends[served.name] = LocalBackend(served.name, served, owner=group)
            else:
                key = resolve_model(spec.target, field="models").path
                if key not in loaded:
                    loaded[key] = ServedModel.load(spec.target, name=spec.name, max_batch=max_batch,
                                                   precision=precision, device=device)
                backends[spec.name] = LocalBackend(spec.name, loaded[key])
    except BaseException:
        close_backends(backends)   # a vLLM server started for an earlier spec is not left running
        raise
    return backends


def close_backends(backends: dict) -> None:
    """Stop every local model's engine among `backends` (one shared by several names is stopped once): what the
    owner of the backends calls when it ends (`tunelab ui`, after the page stops)."""
    for b in list(backends.values()):
        owner = getattr(b, "owner", None) or getattr(b, "served", None)
        if owner is not None:
            owner.close()
