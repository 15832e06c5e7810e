"""The one interface every decoding goes through, and its embedded implementation.

Evaluation, GRPO's and RFT's rollouts and `tunelab generate` render and tokenise prompts themselves (the model's
own template and stop tokens: one renderer for all) and then ask an engine one thing: continue these token rows,
greedily or drawing with a seed a row, and say whether each stopped by itself. Two engines answer it:

- `tunelab.decoding.embedded.EmbeddedEngine` — tunelab's own decoding core in this process (`decode_rows`: KV
  cache, prefix-tree prefill, continuous batching). Nothing to install; the default.
- `tunelab.decoding.vllm_engine.VLLMEngine` — a vLLM server (started by `decoding.vllm_server` or running at a
  URL), the base loaded once and each adapter by name.

Texts, stop strings and finish reasons are made from the returned ids by the caller's `TextStream`s, so both
engines' answers are read by the same code. `embedded.as_engine` lets a caller that holds a torch model pass it
as it is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tunelab.decoding.sampling import SamplingParams
from tunelab.decoding.text_stream import TextStream


@runtime_checkable
class DecodingEngine(Protocol):
    """What a decoding asks of an engine. `kind` names it in logs and results ("embedded", "vllm");
    `generation_config` is the served model's (its stop tokens, `decoding.stops.stop_token_ids`)."""

    kind: str
    generation_config: object

    def decode(self, rows: list[list[int]], max_new_tokens: int, stops: frozenset[int], *, batch_size: int = 32,
               sampling: SamplingParams | None = None, seeds: list[int] | None = None,
               streams: list[TextStream] | None = None, keep_stop: bool = False,
               on_done=None) -> tuple[list[list[int]], list[bool]]:
        """The continuation of every row, greedy unless `sampling` (then row i draws from a generator seeded with
        `seeds[i]`): (the new ids, the stop token excluded unless `keep_stop`; whether each row stopped by
        itself — a stop token, or a stop string its `streams[i]` found — rather than at `max_new_tokens`).
        `streams`, one a row, are fed the row's tokens up to where it ended; `on_done(k)` is told as rows end."""
        ...
