"""A model being served: weights, tokenizer, chat formatting and its batching engine.

`ServedModel.load` accepts what `tunelab serve` and `tunelab ui` accept, as `tunelab.convert.resolve_model` turns
every named model into a loadable one: a run directory (its best checkpoint, else the last), a checkpoint
directory, a merged/full model directory, an adapter directory (on its base, merged on load), a GGUF file, a
MindFormers .ckpt (with its YAML and a tokenizer) or a hub id. `ServedModel.resolved` keeps what was resolved:
the base and the adapter apart.

`ServedModel.defaults` is what the model's generation_config.json says about decoding (greedy for a tunelab
checkpoint scored greedily; a hub model's own sampling): the server and the UI use it for what a request or a
slider leaves out.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunelab.decoding.generation_config import load_generation_config, sampling_defaults
from tunelab.serve.engine import Engine

# Used only when a model has neither a chat template nor a tunelab prompt template.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}assistant: {%- endif -%}"
)


def default_name(path: str | Path, model_dir: Path | str) -> str:
    """A readable model id: `run/step-000300` for a checkpoint inside a run, else the directory name."""
    md = Path(model_dir)
    parts = md.resolve().parts if md.exists() else md.parts
    if len(parts) >= 4 and parts[-3] == "checkpoints" and parts[-1] in ("model", "adapter"):
        return f"{parts[-4]}/{parts[-2]}"
    if parts and parts[-1] in ("model", "adapter") and len(parts) >= 2:
        return parts[-2]
    return Path(str(path).rstrip("/")).name or str(path)


def describe_defaults(d) -> str:
    """One line for the console: the model's sampling defaults, or OpenAI's when it states none."""
    if d.temperature is None:
        return "OpenAI's (temperature 1): the model has no generation_config.json stating its decoding"
    how = "greedy (temperature 0)" if d.temperature == 0 else \
        f"temperature {d.temperature:g}, top_p {d.top_p:g}, top_k {d.top_k or 'off'}"
    return how + (f", max_tokens {d.max_tokens}" if d.max_tokens else "") + " from generation_config.json"


BIG_BYTES = 1_000_000     # a request body or /tokenize answer this large is followed by release_heap()
_TRIM = None


def release_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim; elsewhere a no-op). Tokenising a 1.5 MB text
    or parsing a 5 MB body peaks at hundreds of MB of small allocations; freed, glibc keeps those pages for
    reuse, so a server's RSS would ratchet up with every large request (the soak benchmark saw +576 MB)."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):    # not glibc
            _TRIM = False
    if _TRIM:
        _TRIM(0)


class ServedModel:
    def __init__(self, model, tokenizer, name: str, max_batch: int = 16, model_dir: Path | str | None = None,
                 context_len: int | None = None, resolved=None, make_engine=None, generation_config=None):
        """`model`: the torch model the embedded engine decodes with; `make_engine(tokenizer)`: another engine of
        the same contract instead (`serve.engine_vllm`: no model in this process), made from the tokenizer as
        served (its chat template set), with `generation_config` the model's decoding defaults."""
        from tunelab.data.templates import load_template, with_chat_template
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.resolved = resolved   # the `ResolvedModel` it was loaded from: its base and adapter apart
        template = load_template(model_dir) if model_dir is not None and Path(model_dir).is_dir() else None
        # a chat model trained in its own template with a run's system prompt or template variables is served
        # with them (`PromptTemplate.render_messages`); every other model through its tokenizer's chat template
        self.template = template if template is not None and template.is_model else None
        # a tokenizer without a chat template is served through a copy that has one: the caller's is unchanged
        if not getattr(tokenizer, "chat_template", None):
            tokenizer = self.tokenizer = with_chat_template(
                tokenizer, template.chat_template() if template else FALLBACK_CHAT_TEMPLATE)
        self._lock = threading.Lock()   # tokenizer calls from request threads (the engine has its own copy)
        self.defaults = sampling_defaults(generation_config if make_engine is not None
                                          else getattr(model, "generation_config", None))
        # the scheduler thread runs from here until `close` (which the owner calls, or a `with` block's end)
        self.engine = make_engine(tokenizer) if make_engine is not None else \
            Engine(model, tokenizer, max_batch=max_batch, context_len=context_len).start()
        self.created = int(time.time())
        # the HTTP server's tokenising and detokenising runs here, off its event loop: each worker has a
        # tokenizer of its own (a fast tokenizer is one Rust object that two threads cannot use at once)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tunelab-tokenize",
                                        initializer=self._own_tokenizer)
        self._token_strs: dict[int, str] = {}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.max_token_chars = max([len(p) for p in pieces if isinstance(p, str)] or [1])

    def _own_tokenizer(self) -> None:
        try:
            self._local.tokenizer = copy.deepcopy(self.tokenizer)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot be copied is shared behind the lock
            pass

    def _tokenizer(self):
        """This thread's own tokenizer (a worker's) and no lock, else the shared one and its lock."""
        own = getattr(self._local, "tokenizer", None)
        return (own, contextlib.nullcontext()) if own is not None else (self.tokenizer, self._lock)

    async def off_loop(self, fn, *args):
        """`fn(*args)` on a tokenizer worker thread, awaited: the event loop keeps serving meanwhile."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def too_long(self, chars: int) -> bool:
        """Whether text of `chars` characters certainly exceeds the context, without tokenising it: no token
        spans more than `max_token_chars` characters (twice that, for normalisers that merge characters)."""
        return chars > 2 * self.max_token_chars * self.context_len

    @classmethod
    def load(cls, path: str | Path, name: str | None = None, max_batch: int = 16, precision: str = "auto",
             device: str | None = None, which: str = "best", mindformers_config: str | Path | None = None,
             tokenizer: str | Path | None = None) -> "ServedModel":
        """`device` and `precision` as every verb takes them (`model.device`): by default this machine's GPU
        in its native half precision, else the CPU in fp32. `which`: a run's best or last checkpoint;
        `mindformers_config` / `tokenizer`: what a MindFormers .ckpt needs (`tunelab.convert.resolve_model`)."""
        from tunelab.convert.resolve_model import resolve_model
        from tunelab.model.device import inference_dtype, resolve_device
        from tunelab.model.loading import load_for_inference, quiet_transformers
        quiet_transformers()
        resolved = resolve_model(path, which=which, mindformers_config=mindformers_config, tokenizer=tokenizer,
                                 field=None)
        model_dir = resolved.path
        dev = resolve_device(device, field="device")
        model, tok = load_for_inference(model_dir, dtype=inference_dtype(precision, dev), merge=True, device=dev,
                                        base=resolved.base)
        if Path(model_dir).is_dir() and (own := load_generation_config(model_dir)) is not None:
            model.generation_config = own     # an adapter's, not its base's
        model_dir = Path(model_dir) if resolved.local else model_dir
        return cls(model, tok, name or default_name(path, model_dir), max_batch, model_dir, resolved=resolved)

    @property
    def context_len(self) -> int:
        return self.engine.context_len

    def sampling(self, temperature: float | None, top_p: float | None, top_k: int | None) -> dict:
        """temperature, top_p and top_k of `SamplingParams`: what the caller gives, else the model's generation
        config (`defaults`), else OpenAI's (1, 1, no top-k)."""
        d = self.defaults

        def given(value, default, fallback):
            return value if value is not None else default if default is not None else fallback
        k = given(top_k, d.top_k, 0)
        return {"temperature": given(temperature, d.temperature, 1.0), "top_p": given(top_p, d.top_p, 1.0),
                "top_k": k if k > 0 else 0}

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Messages ({"role", "content": str}) as the prompt text, through the model's chat template."""
        tok, lock = self._tokenizer()
        with lock:
            if self.template is not None:
                return self.template.bind(tok).render_messages(messages, add_generation_prompt)
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        tok, lock = self._tokenizer()
        with lock:
            return list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        tok, lock = self._tokenizer()
        with lock:
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_str(self, token_id: int) -> str:
        """One token's text (cached: log-probabilities and /tokenize ask for the same ids again and again)."""
        s = self._token_strs.get(token_id)
        if s is None:
            s = self._token_strs[token_id] = self.decode([token_id])
        return s

    def close(self) -> None:
        """Stop the engine and the tokenizer workers (idempotent): every owner calls it, however it ends."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    def __enter__(self) -> "ServedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServedModels:
    """The models one server answers for, by name: one (a model on the embedded engine), or a run's base and its
    checkpoints on one vLLM server (`serve.vllm_serving`). The first is the default: a request that names no
    model gets it, and /v1/models lists it first. `on_close`: what else ends with them (the shared engine, the
    vLLM server), called in order after every model is closed."""

    def __init__(self, models: list[ServedModel], on_close=()):
        if not models:
            raise ValueError("no models to serve")
        self.models = {m.name: m for m in models}
        self.default = models[0]
        self._on_close = list(on_close)

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def close(self) -> None:
        """Close every model, then what `on_close` names (idempotent: each is taken once)."""
        failed = None
        for step in [m.close for m in self.models.values()] + self._on_close:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the others still close (a vLLM server is still stopped)
                failed = failed or e
        self._on_close = []
        if failed is not None:
            raise failed

    def __enter__(self) -> "ServedModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
