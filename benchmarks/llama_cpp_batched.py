"""Greedy decoding of many prompts at once in llama.cpp, through llama-cpp-python's C API.

llama-cpp-python's `Llama` class decodes one sequence at a time (its context is made with one sequence slot and
`generate` feeds one stream); llama.cpp itself decodes many: one `llama_batch` holds tokens of several sequences
(`seq_id`), each with its own positions in a shared (unified) KV cache, as llama.cpp's `batched` example and
`llama-server`'s slots do. `BatchedGreedy` does that from Python: the prompts' tokens are fed in as few
`llama_decode` calls as the batch size allows, then one call per step feeds every unfinished sequence's last token,
and the next token of each is the argmax of its logits row (the first maximum, as `torch.argmax` picks). Token ids
in and out: the caller tokenises, so both engines see the same ids.
"""

from __future__ import annotations

from pathlib import Path


class BatchedGreedy:
    """One llama.cpp model and context with `sequences` slots of `context_per_sequence` tokens each."""

    def __init__(self, path: str | Path, sequences: int, context_per_sequence: int, threads: int,
                 f32_cache: bool = False, batch_tokens: int = 2048):
        import llama_cpp as lc
        self.lc = lc
        # llama.cpp logs every tensor it loads to stderr; a benchmark's output is its table. Silenced through
        # llama-cpp-python's own process-wide callback: a callback of ours, once garbage-collected, stayed set in
        # llama.cpp and the next model load anywhere in the process called freed memory (SIGSEGV)
        from llama_cpp import _logger
        _logger.set_verbose(False)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lc.llama_context_default_params()
        params.n_ctx = sequences * context_per_sequence
        params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = sequences
        params.kv_unified = True  # one cache for all slots, each sequence masked to its own cells
        params.n_threads = params.n_threads_batch = threads
        if f32_cache:  # the default F16 cache rounds what an fp32 engine keeps: compare like with like
            params.type_k = params.type_v = lc.GGML_TYPE_F32
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {params.n_ctx} tokens for {path}")
        self.sequences, self.batch_tokens = sequences, batch_tokens
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(batch_tokens, 0, sequences)

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, stops: set[int]) -> list[list[int]]:
        """Each prompt's greedy continuation (at most `sequences` prompts at once), ending before a stop id or at
        `max_new_tokens`."""
        if len(prompts) > self.sequences:
            raise ValueError(f"{len(prompts)} prompts for {self.sequences} sequence slots")
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        feed = [(tok, pos, seq, pos == len(ids) - 1) for seq, ids in enumerate(prompts) for pos, tok in enumerate(ids)]
        nxt = self._decode(feed)
        out: list[list[int]] = [[] for _ in prompts]
        position = [len(ids) for ids in prompts]
        while nxt:
            feed = []
            for seq, tok in sorted(nxt.items()):
                if tok in stops:
                    continue
                out[seq].append(tok)
                if len(out[seq]) < max_new_tokens:
                    feed.append((tok, position[seq], seq, True))
                    position[seq] += 1
            nxt = self._decode(feed) if feed else {}
        return out

    def _decode(self, feed: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Feed (token, position, sequence, wants logits) entries in calls of at most `batch_tokens`; the argmax
        of every requested logits row, by sequence (read before the next call overwrites the logits)."""
        import numpy as np
        lc, b = self.lc, self.batch
        nxt: dict[int, int] = {}
        for start in range(0, len(feed), self.batch_tokens):
            chunk = feed[start: start + self.batch_tokens]
            b.n_tokens = len(chunk)
            for i, (tok, pos, seq, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
                b.seq_id[i][0] = seq
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} (context full?)")
            for i, (_, _, seq, logits) in enumerate(chunk):
                if logits:
                    row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                    nxt[seq] = int(row.argmax())
        return nxt
