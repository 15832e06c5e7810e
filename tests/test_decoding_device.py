"""The decoding core does the work a GPU wants, proven on a CPU by recording the work itself.

`Work` records every tensor op under a `TorchDispatchMode`, plus the host copies that do not dispatch on a CPU
(`Tensor.tolist`, `.cpu()`, `.numpy()`): which of them would make the host wait for a GPU (a copy to the host, a
Python number or bool read off a tensor, an op whose output size depends on data — `nonzero`, boolean indexing),
which make tensors from host data, how many bytes copies write, and the dtypes ops produce. With it:

- a decode step of the evaluation engine and of the server (greedy, and sampled with every filter and with
  log-probabilities) waits for the device at most once, and greedy steps send nothing from the host;
- sampling off the CPU runs in float32 (on the `meta` device, where a host sync would raise), and on a CPU a
  seed still draws the tokens tunelab drew before (a faithful copy of the old sampler);
- rows join and leave a running batch without the cache being copied (its buffers stay where they are);
- prompt log-probabilities never hold a whole prompt's logits in float32.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunelab.decoding.batch import DecodeBatch
from tunelab.decoding.embedded import decode_rows
from tunelab.decoding.sampling import SamplingParams, sample_next, token_logprobs

# ops a GPU answers only by making the host wait: a value read off a tensor, or an output whose size is data
WAITS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "unique", "_unique2"}
WRITES = {"copy_", "index_put_", "cat", "index", "index_select", "index_copy", "clone", "constant_pad_nd",
          "_to_copy", "repeat_interleave", "gather", "scatter"}


class Work(TorchDispatchMode):
    """What ran, per phase: host waits, tensors made from host data, bytes written by copies, float64 ops, and
    the largest float32 tensor whose last dimension is `vocab`."""

    def __init__(self, vocab: int = 0):
        super().__init__()
        self.vocab, self.now = vocab, "other"
        self.waits: collections.Counter = collections.Counter()
        self.from_host: collections.Counter = collections.Counter()
        self.written: collections.Counter = collections.Counter()
        self.float64: list[str] = []
        self.largest_float32_rows = 0

    @contextlib.contextmanager
    def phase(self, name: str):
        before, self.now = self.now, name
        try:
            yield
        finally:
            self.now = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in WAITS or (name in ("index", "index_put_")
                             and any(i is not None and i.dtype == torch.bool for i in args[1])):
            self.waits[self.now] += 1
        if name == "lift_fresh":
            self.from_host[self.now] += 1
        if name in WRITES:
            target = args[0] if name == "copy_" else out
            if isinstance(target, torch.Tensor):
                self.written[self.now] += target.numel() * target.element_size()
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.float64.append(name)
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and self.vocab and t.dim() \
                    and t.shape[-1] == self.vocab:
                self.largest_float32_rows = max(self.largest_float32_rows, t.numel() // self.vocab)
        return out


@pytest.fixture
def work(monkeypatch):
    """A `Work` recorder, entered; the host copies that do not dispatch on a CPU count as waits."""
    rec = Work()
    for name in ("tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            rec.waits[rec.now] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    with torch.inference_mode(), rec:
        yield rec


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, 1 + 1 = 2; the answer is 42."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab: int, dtype=torch.float32, attention: str = "sdpa", layers: int = 2, eos: int = 1):
    """A random Llama with grouped-query attention (4 heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=eos, bos_token_id=0, pad_token_id=2, attn_implementation=attention)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype).eval()


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Rows of different lengths, most starting with a shared header, as evaluation prompts do."""
    rng = random.Random(seed)
    header = [rng.randrange(3, vocab) for _ in range(6)]
    return [(header if i % 3 else []) + [rng.randrange(3, vocab) for _ in range(rng.randint(2, 14))]
            for i in range(n)]


def waits_per_step(work: Work, steps: list[int]) -> list[int]:
    """Host waits between one decode step and the next (the `steps` marks are running totals)."""
    return [b - a for a, b in itertools.pairwise(steps)]


# --- host syncs per decode step ---------------------------------------------------------------------------

def test_an_evaluation_decode_step_waits_for_the_device_once(work, monkeypatch):
    model = tiny_llama(300)
    marks: list[int] = []
    steps_with_host_data = []
    events = collections.Counter()
    step, prefill, remove = DecodeBatch.step, DecodeBatch.prefill.__func__, DecodeBatch.remove

    def marked_step(self, tokens):
        marks.append(work.waits["decode"])
        steps_with_host_data.append(work.from_host["decode"])
        return step(self, tokens)

    def marked_prefill(cls, *a, **k):
        events["prefill"] += 1
        with work.phase("prefill"):
            return prefill(cls, *a, **k)

    def counted_remove(self, *a, **k):
        events["remove"] += 1
        return remove(self, *a, **k)
    monkeypatch.setattr(DecodeBatch, "step", marked_step)
    monkeypatch.setattr(DecodeBatch, "prefill", classmethod(marked_prefill))
    monkeypatch.setattr(DecodeBatch, "remove", counted_remove)
    stops = frozenset(range(3, 300, 4))          # a quarter of the vocabulary ends a row: rows end at all steps
    with work.phase("decode"):
        out, _ = decode_rows(model, prompts(20, 300), 16, stops, 2, batch_size=4)
    marks.append(work.waits["decode"])
    assert events["prefill"] >= 3 and events["remove"] >= 3      # rows joined and left mid-flight
    assert len(marks) > 20 and max(waits_per_step(work, marks)) <= 1, waits_per_step(work, marks)
    assert steps_with_host_data[-1] == 0                        # a step's input never comes from the host
    assert len(out) == 20 and any(out)


def serve(engine, seqs, work: Work) -> list[int]:
    """Run the engine's scheduler turns on this thread (its own thread closed): waits per decode step."""
    engine._pending.extend(seqs)
    per_step = []
    while engine._pending or engine._running:
        admit = engine._take_pending()
        if admit:
            with work.phase("admit"):
                engine._prefill(admit)
        if engine._running:
            before = work.waits["step"]
            with work.phase("step"):
                engine._step()
            per_step.append(work.waits["step"] - before)
    return per_step


@pytest.mark.parametrize("sampled", [False, True])
def test_a_serving_decode_step_waits_for_the_device_once(work, tokenizer, sampled):
    from tunelab.serve.engine import Engine, Sequence
    model = tiny_llama(len(tokenizer))
    engine = Engine(model, tokenizer, max_batch=4)
    engine.close()
    kinds = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, seed=1, logprobs=3),
             SamplingParams(temperature=1.2, top_k=5, seed=2), SamplingParams(temperature=1.0, top_p=0.7, seed=3),
             SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=4, logprobs=0)]
    done = []
    seqs = [Sequence(row, SamplingParams(**{**(kinds[i % 5] if sampled else kinds[0]).__dict__,
                                            "max_tokens": 3 + i % 6, "ignore_eos": True}),
                     lambda out: out.finish_reason and done.append(out.finish_reason), index=i)
            for i, row in enumerate(prompts(10, len(tokenizer)))]
    per_step = serve(engine, seqs, work)
    assert done == ["length"] * 10 and len(per_step) >= 8
    assert max(per_step) <= 1, per_step
    assert work.from_host["step"] <= (5 * len(per_step) if sampled else 0)   # sampling parameters, asynchronously
    assert all(len(s.output_ids) == s.params.max_tokens for s in seqs)


def test_a_decode_step_passes_sdpa_the_mask_transformers_would_build(work):
    model = tiny_llama(300)
    for rows in ([[5, 6, 7, 8], [9, 10]], [[5, 6, 7], [9, 10, 11]]):        # padded, then not
        batch, logits = DecodeBatch.prefill(model, rows, 2, 4, share_prefix=False)
        tokens = logits.argmax(-1)
        theirs = copy.deepcopy(batch, {id(model): model})
        theirs._step_mask = lambda batch=theirs: batch.mask      # transformers builds it from the 2-D mask
        with work.phase("step"):
            ours = batch.step(tokens)
        assert work.waits["step"] == 0
        assert torch.equal(ours, theirs.step(tokens))


# --- sampling: on the device, and the CPU's seeded tokens unchanged --------------------------------------

MIXED = [SamplingParams(temperature=0), SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, top_k=20),
         SamplingParams(temperature=1.0, top_p=0.9), SamplingParams(temperature=1.5, top_k=50, top_p=0.8)]


def test_sampling_off_the_cpu_runs_in_float32_without_a_host_sync():
    # the meta device runs the device path (float32) with shapes only: any read of a value would raise
    rec = Work()
    with torch.inference_mode(), rec:
        logits = torch.randn(5, 1000, device="meta")
        for params in (MIXED, MIXED[1:], MIXED[3:]):
            tokens = sample_next(logits[:len(params)], params, [None] * len(params))
            assert tokens.shape == (len(params),) and tokens.device.type == "meta"
    assert rec.float64 == [] and sum(rec.waits.values()) == 0


def old_sample_tokens(logits, params, generators) -> list[int]:
    """tunelab's sampler before it moved onto the device (decoding.py, 2026-11-25), copied faithfully."""
    if torch.isnan(logits).any():
        logits = torch.nan_to_num(logits, nan=float("-inf"))
    tokens = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if not p.greedy:
            tokens[i] = old_sample_row(logits[i], p, generators[i])
    return tokens


def old_sample_row(row, p, generator) -> int:
    x = row.double()
    top = x.max()
    if torch.isinf(top):
        if top < 0:
            return int(row.argmax())
        x = torch.where(x == top, 0.0, float("-inf"))
    else:
        x = (x - top) / p.temperature
    if 0 < p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs > p.top_p
        x[order[drop]] = float("-inf")
    probs = x.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def test_a_seed_draws_on_a_cpu_the_tokens_it_always_drew():
    rng = random.Random(0)
    for trial in range(120):
        n, vocab = rng.randint(1, 6), rng.choice([7, 50, 300, 1724])
        params = [SamplingParams(temperature=rng.choice([0, 1e-6, 0.3, 0.7, 1.0, 2.0]),
                                 top_k=rng.choice([0, -1, 1, 3, 40, vocab, 10 ** 6]),
                                 top_p=rng.choice([1.0, 0.95, 0.5, 0.1])) for _ in range(n)]
        seeds = [rng.randrange(2 ** 62) for _ in range(n)]
        ours, theirs = ([torch.Generator().manual_seed(s) for s in seeds] for _ in range(2))
        for step in range(4):
            g = torch.Generator().manual_seed(trial * 10 + step)
            logits = torch.randn(n, vocab, generator=g) * rng.choice([0.1, 3.0, 30.0])
            if trial % 3 == 0:                       # ties everywhere: the order of equal logits matters
                logits = logits.round()
            if trial % 4 == 1:
                logits[torch.rand(n, vocab, generator=g) < 0.5] = float("-inf")
            if trial % 10 == 2:
                logits[0] = float("-inf")            # nothing allowed: the argmax
            assert sample_next(logits, params, ours).tolist() == old_sample_tokens(logits, params, theirs)
        # a row with nothing allowed took its argmax; its noise is still made (the one difference: only after
        # a step whose logits were all -inf or NaN do that row's later draws differ from before)
        broken = {0} if trial % 10 == 2 else set()
        assert all(torch.equal(a.get_state(), b.get_state()) for i, (a, b) in enumerate(zip(ours, theirs))
                   if i not in broken or params[i].greedy)


def test_a_wide_vocabulary_draws_its_noise_on_several_threads_and_the_same_tokens():
    """Past 4,096 tokens a CPU draw spreads its rows' noise over torch's threads: each row still from its own
    generator, so the tokens are the ones one thread (and torch.multinomial) drew, whatever the thread count."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        for trial in range(6):
            n, vocab = 2 + trial, 8192 + trial
            params = [SamplingParams(temperature=t, top_p=p)
                      for t, p in zip([1.0, 0.7, 2.0, 1.0, 0.3, 1.0, 1.0, 0.9], [1.0, 0.9, 1.0, 0.5, 1.0, 1.0, 0.95, 1.0])][:n]
            ours, theirs = ([torch.Generator().manual_seed(trial * 100 + i) for i in range(n)] for _ in range(2))
            for step in range(3):
                logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(trial * 10 + step)) * 3
                if trial == 1:
                    logits[1] = float("-inf")         # nothing allowed
                    logits[0, 17] = float("inf")      # an overflowed logit: drawn among the +inf alone
                with torch.inference_mode(step == 1):  # as generation calls it, and outside it
                    assert sample_next(logits, params, ours).tolist() == old_sample_tokens(logits, params, theirs)
            assert all(torch.equal(a.get_state(), b.get_state()) for i, (a, b) in enumerate(zip(ours, theirs))
                       if not (trial == 1 and i == 1))
    finally:
        torch.set_num_threads(threads)


# --- the KV cache: rows join and leave without copying it -------------------------------------------------

def cache_bytes(batch) -> int:
    return sum(t.numel() * t.element_size() for layer in batch.cache.layers for t in (layer.keys, layer.values))


def buffers(batch) -> list[int]:
    return [layer._k.data_ptr() for layer in batch.cache.layers]


def test_rows_join_and_leave_a_running_batch_without_copying_its_cache(work):
    model = tiny_llama(300, layers=4)
    rows = prompts(16, 300, seed=1)
    batch, logits = DecodeBatch.prefill(model, rows[:8], 2, 16)
    batch.reserve(12)
    tokens = logits.argmax(-1)
    for _ in range(3):
        tokens = batch.step(tokens).argmax(-1)
    where = buffers(batch)
    keys = [layer.keys.clone() for layer in batch.cache.layers]
    total = cache_bytes(batch)
    row = total // len(batch)

    with work.phase("leave"):
        order, tokens = batch.remove([1, 5], tokens)
    assert order == [0, 6, 2, 3, 4, 7] and buffers(batch) == where
    assert all(torch.equal(layer.keys, k[order]) for layer, k in zip(batch.cache.layers, keys))
    assert work.written["leave"] <= 2 * row + 4096, (work.written["leave"], total)   # the moved rows, not the cache

    batch.trim()
    kept = cache_bytes(batch)
    new, new_logits = DecodeBatch.prefill(model, rows[8:14], 2, 16)
    joining = cache_bytes(new)
    with work.phase("join"):
        batch.extend(new)
    assert buffers(batch) == where and len(batch) == 12
    # the newcomers' rows (left-padded to the batch's width) and the zeroed new columns of the rows already here
    assert work.written["join"] <= cache_bytes(batch) - kept + 4096, (work.written["join"], joining, kept)
    assert work.written["join"] < kept
    tokens = torch.cat([tokens, new_logits.argmax(-1)])
    with work.phase("step"):
        batch.step(tokens)
    assert work.waits["leave"] == work.waits["join"] == work.waits["step"] == 0


def test_a_batch_with_rows_moved_decodes_as_one_prefilled_in_that_order():
    model = tiny_llama(300)
    rows = prompts(6, 300, seed=2)
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, rows, 2, 8)
        tokens = logits.argmax(-1)
        order, tokens = batch.remove([0, 3], tokens)
        got = batch.step(tokens)
        fresh, fresh_logits = DecodeBatch.prefill(model, [rows[i] for i in order], 2, 8)
        want = fresh.step(fresh_logits.argmax(-1))
    assert order == [4, 1, 2, 5]
    assert torch.allclose(got, want, atol=1e-5, rtol=0) and torch.equal(got.argmax(-1), want.argmax(-1))


def test_running_rows_admit_by_their_setting_and_keep_each_owner_on_its_row():
    """The continuous batching evaluation and the server share (decoding/running.py): the server admits while a row
    is free, evaluation once half the batch is; a batch that cannot take rows mid-flight admits none; after rows
    leave and join, each owner's row decodes what that prompt decodes prefilled alone."""
    from tunelab.decoding.running import RunningRows
    model = tiny_llama(300)
    rows = prompts(7, 300, seed=3)
    with torch.inference_mode():
        serve, evaluation = RunningRows(4), RunningRows(4, admit_at=2)
        assert serve.room() == evaluation.room() == 4
        for running in (serve, evaluation):
            batch, logits = DecodeBatch.prefill(model, rows[:4], 2, 8)
            running.join(batch, logits.argmax(-1), [0, 1, 2, 3])
        assert serve.room() == evaluation.room() == 0
        for running in (serve, evaluation):
            running.leave([1])
        assert (serve.room(), evaluation.room()) == (1, 0)  # one free row: the server admits, evaluation waits
        evaluation.leave([0])
        assert evaluation.room() == 2 and evaluation.owners == [2, 3]  # each time the last row moved into the hole
        batch, logits = DecodeBatch.prefill(model, rows[4:6], 2, 8)
        evaluation.join(batch, logits.argmax(-1), [4, 5])
        got = evaluation.step()
        for j, owner in enumerate(evaluation.owners):  # each row: its prompt, then the token it chose
            alone, first = DecodeBatch.prefill(model, [rows[owner]], 2, 8)
            want = alone.step(first.argmax(-1))
            assert torch.equal(got[j].argmax(), want[0].argmax()), owner
        evaluation.leave(list(range(len(evaluation))))
        assert not evaluation and evaluation.room() == 4 and evaluation.batch is None
        stuck = RunningRows(4)
        batch, logits = DecodeBatch.prefill(model, rows[:2], 2, 8)
        stuck.join(batch, logits.argmax(-1), [0, 1])
        stuck.batch.cache.layers[0] = object()  # as a sliding-window layer: the batch cannot take rows mid-flight
        assert stuck.room() == 0


# --- log-probabilities a chunk of positions at a time -----------------------------------------------------

def test_token_logprobs_in_chunks_are_one_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(21, 2 ** 18)                       # ~8 MB of float32: 8 rows at a time
    targets = torch.randint(0, 2 ** 18, (21,))
    targets[3] = logits[3].argmax()
    chosen, is_max, values, ids = token_logprobs(logits, targets, 4)
    full = torch.log_softmax(logits, dim=-1)
    assert torch.equal(chosen, full.gather(1, targets[:, None])[:, 0])
    assert torch.equal(is_max, full.argmax(-1) == targets) and bool(is_max[3])
    want = full.topk(4, dim=-1)
    assert torch.equal(values, want.values) and torch.equal(ids, want.indices)


def test_prompt_logprobs_never_hold_the_prompt_logits_in_float32(work, tokenizer):
    from tunelab.serve.engine import Engine
    vocab = 2 ** 15                                          # 64 positions of float32 logits at a time
    model = tiny_llama(vocab, dtype=torch.bfloat16, layers=1)
    engine = Engine(model, tokenizer, max_batch=2)
    engine.close()
    prompt = [random.Random(3).randrange(vocab) for _ in range(300)]
    work.vocab = vocab
    _, logits = DecodeBatch.prefill(model, [prompt], 2, 4, all_logits=True)
    entries = engine._prompt_logprobs(logits[0], prompt, 2)
    assert work.largest_float32_rows <= 64, work.largest_float32_rows
    full = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    assert entries[0].logprob is None and len(entries) == 300
    assert [e.logprob for e in entries[1:]] == full.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0].tolist()
    top = full.topk(2, dim=-1)
    assert [e.top for e in entries[1:]] == [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]
