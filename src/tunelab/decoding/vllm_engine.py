"""tunelab's side of a vLLM server: token ids in, token ids out.

tunelab renders and tokenises every prompt itself (the model's own template, its stop tokens), so the vLLM
engine is asked the same thing the embedded one is: continue these token rows, or score them. Prompts go as
token ids (`prompt: [[ids], …]`), answers come back as token ids (`return_token_ids`) and are detokenised by
tunelab's own `TextStream`, so the texts, stop strings and finish reasons are computed by the one code both
engines share. An adapter is a model name: loaded at runtime from its directory (`/v1/load_lora_adapter`), never
merged, unloaded when done.

What differs from the embedded engine, by design: a sampled answer's random draws are vLLM's (seeded per
prompt, so repeatable, but not the embedded engine's numbers), and vLLM computes in its own kernels (the same
greedy tokens on fp32 within rounding; tests/test_vllm_engine.py measures both).

Not asked of vLLM: prompt log-probabilities (log-likelihood tasks, perplexity). With LoRA enabled, vLLM maps
adapters per request where prompt log-probabilities need them per token (vllm-project/vllm#16668): on its CPU
build a batch of two such requests kills the engine. Those scorers stay on the embedded engine, and a run says so.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunelab.decoding.sampling import SamplingParams
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

CHUNK = 64           # prompts a request: vLLM schedules every request it holds together
IN_FLIGHT = 64       # requests open at once (a drawing row is a request of its own)


def unservable(adapter: Path | dict, max_lora_rank: int) -> str | None:
    """Why vLLM cannot serve an adapter (its directory, or its peft config as a dict), or None when it can: a
    plain LoRA of a rank it takes. Evaluation, serving and rollouts ask this one question."""
    config = adapter
    if not isinstance(adapter, dict):
        try:
            config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "its adapter_config.json cannot be read"
    kind = str(getattr(config.get("peft_type", ""), "value", config.get("peft_type", "")))
    if kind != "LORA":
        return f"vLLM serves LoRA adapters, not {kind or 'this kind'}"
    if config.get("trainable_token_indices") or config.get("modules_to_save"):
        return "the adapter trains token rows or whole modules, which vLLM's LoRA does not load"
    if config.get("use_dora"):
        return "vLLM does not serve DoRA"
    rank = max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > max_lora_rank:
        return f"its rank {rank} is above engine.max_lora_rank ({max_lora_rank})"
    return None


class VLLMEngine:
    """A vLLM OpenAI-compatible server at `url` serving the base as `model`; `adapter` (a loaded adapter's name)
    answers instead of the base when set. `generation_config`: the served model's (its stop tokens), read from
    its directory by the caller."""

    kind = "vllm"

    def __init__(self, url: str, model: str, generation_config=None, timeout: float = 3600.0,
                 api_key: str | None = None):
        from tunelab.decoding.openai_client import Endpoint
        self.generation_config = generation_config
        self.adapter: str | None = None
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model = model
        # the one OpenAI-compatible client: its retry policy and its errors naming the URL
        self.endpoint = Endpoint(self.url + "/v1", api_key, timeout=timeout)
        self.adapters: dict[str, str] = {}

    # --- the server's own routes ------------------------------------------------------------------------

    def _post(self, path: str, body: dict) -> dict | str:
        return self.endpoint.post(path, body)

    def served_models(self) -> list[str]:
        return self.endpoint.models()

    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter directory under `name` (a checkpoint's adapter, as the trainer wrote it)."""
        if self.adapters.get(name) == path:
            return
        if name in self.adapters:
            self.unload_adapter(name)
        self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self.adapters[name] = str(path)
        log.info(f"vLLM: adapter {name} loaded from {path}")

    def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is not None:
            self._post("/unload_lora_adapter", {"lora_name": name})
            log.info(f"vLLM: adapter {name} unloaded")

    def close(self) -> None:
        for name in list(self.adapters):
            try:
                self.unload_adapter(name)
            except TunelabError as e:   # the server may be gone already: nothing left to unload
                log.debug(str(e))
        self.endpoint.close()

    # --- decoding ---------------------------------------------------------------------------------------

    def _completions(self, bodies: list[dict]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=min(IN_FLIGHT, max(1, len(bodies)))) as pool:
            return list(pool.map(lambda b: self._post("/completions", b), bodies))

    def decode(self, rows: list[list[int]], max_new_tokens: int, stops: frozenset[int], *, batch_size: int = 32,
               sampling: SamplingParams | None = None, seeds: list[int] | None = None, streams=None,
               keep_stop: bool = False, on_done=None,
               logps: list[list[float]] | None = None) -> tuple[list[list[int]], list[bool]]:
        """`DecodingEngine.decode` on the server. Greedy rows go `CHUNK` to a request; a drawing row goes alone
        with its seed (vLLM seeds a request, not a row). The stop strings of `streams` end an answer early on
        the server, and each stream is then fed the returned tokens, cutting the text where the embedded engine
        would. `batch_size` is the embedded engine's: vLLM schedules what it holds by its own limits.
        `logps`, an empty list, receives each row's sampled tokens' log-probabilities as the server computed them
        (one a returned id, NaN where it gave none): what a trainer corrects its sampler's mismatch by (GRPO's
        `sampler_correction`); after temperature and top-p only on a server started with
        `--logprobs-mode processed_logprobs`."""
        n = len(rows)
        if max_new_tokens <= 0 or not rows:
            return [[] for _ in rows], [False] * n
        # every sampling field said, so a server's defaults from the model's generation_config (vLLM applies
        # them to what a request leaves out) never make its answers differ from the embedded engine's
        base = {"model": self.adapter or self.model, "max_tokens": max_new_tokens, "return_token_ids": True,
                "stop_token_ids": sorted(stops), "skip_special_tokens": False, "include_stop_str_in_output": True,
                "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0}
        if logps is not None:
            base["logprobs"] = 0   # the sampled token's own, no alternatives
            logps[:] = [[] for _ in rows]
        stop_strings = sorted({s for st in streams or () for s in st.stop})
        if stop_strings:
            base["stop"] = stop_strings
        if sampling is None or sampling.greedy:
            base["temperature"] = 0.0
            spans = [(i, min(CHUNK, n - i)) for i in range(0, n, CHUNK)]
            bodies = [{**base, "prompt": rows[i:i + k]} for i, k in spans]
        else:
            if seeds is None or len(seeds) != n:
                raise ValueError("sampling needs one seed a row")
            base.update(temperature=sampling.temperature, top_p=sampling.top_p,
                        top_k=sampling.top_k if sampling.top_k > 0 else -1)
            spans = [(i, 1) for i in range(n)]
            bodies = [{**base, "prompt": [row], "seed": seed} for row, seed in zip(rows, seeds)]
        ids: list[list[int]] = [[] for _ in rows]
        stopped = [False] * n
        for (start, _), answer in zip(spans, self._completions(bodies)):
            for c in answer["choices"]:
                k = start + int(c["index"])
                new = list(c.get("token_ids") or [])
                ended = c.get("finish_reason") == "stop"
                on_token = ended and bool(new) and new[-1] in stops and not isinstance(c.get("stop_reason"), str)
                body = new[:-1] if on_token else new
                for j, token in enumerate(body if streams is not None else ()):
                    if streams[k].add(token):     # where the embedded engine's stream stops too
                        body, on_token, ended = body[:j + 1], False, True
                        break
                new = body + new[-1:] if on_token and keep_stop else body
                ids[k], stopped[k] = new, ended
                if logps is not None:
                    given = (c.get("logprobs") or {}).get("token_logprobs") or []
                    given = [float("nan") if v is None else float(v) for v in given]
                    kept = given[:len(body)] + (given[len(new) - 1:len(new)] if len(new) > len(body) else [])
                    logps[k] = kept + [float("nan")] * (len(new) - len(kept))
            if on_done is not None:
                on_done(len(answer["choices"]))
        return ids, stopped
