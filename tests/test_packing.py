"""Packing: packed samples are computed exactly as if alone; rows are full, bounded, and lose nothing;
answer-only labels put loss on exactly the response tokens and EOS."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from tunelab.data.synthetic.arithmetic import generate
from tunelab.data.examples import Example
from tunelab.data.formats import examples_from_records
from tunelab.data.packing import (IGNORE, Encoded, collate_rows, encode_examples, pack_examples,
                                  packing_efficiency, unpacked_rows)
from tunelab.data.templates import PromptTemplate
from tunelab.model.loading import build_from_scratch
from tunelab.model.tokenizer import train_bpe_tokenizer

TEMPLATE = PromptTemplate("alpaca")


@pytest.fixture(scope="module")
def examples():
    return examples_from_records(generate(60, seed=3, kinds=["int_add", "int_sub", "int_mul"]), "competition")


@pytest.fixture(scope="module")
def tokenizer(examples):
    return train_bpe_tokenizer((TEMPLATE.render(e.instruction, e.input) + e.output for e in examples), 400)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = build_from_scratch("micro", len(tokenizer), {}, tokenizer)
    return m.eval()


def test_packed_logits_equal_each_sample_alone(examples, tokenizer, model):
    encoded = encode_examples(tokenizer, TEMPLATE, examples[:12], max_len=256)
    rows = pack_examples(encoded, 256)
    multi = [r for r in rows if r.position_ids.count(0) > 1]
    assert multi, "expected rows holding several samples"
    batch = collate_rows(rows, tokenizer.pad_token_id, packed=True)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = {}
        for enc in encoded:
            ids = torch.tensor([enc.input_ids])
            alone[tuple(enc.input_ids)] = model(input_ids=ids, use_cache=False).logits[0]

    checked = 0
    for b, row in enumerate(rows):
        starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
        for s, e in zip(starts, starts[1:]):
            ref = alone[tuple(row.input_ids[s:e])]
            torch.testing.assert_close(packed[b, s:e], ref, atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked == len(encoded)


def test_without_restarting_positions_samples_would_leak(examples, tokenizer, model):
    """Control for the test above: the equality is due to the restarting position ids, not luck."""
    encoded = encode_examples(tokenizer, TEMPLATE, examples[:2], max_len=256)
    row = pack_examples(encoded, 256)[0]
    n0 = len(encoded[0].input_ids)
    with torch.no_grad():
        ids = torch.tensor([row.input_ids])
        leaky = model(input_ids=ids, use_cache=False).logits[0, n0:]
        alone = model(input_ids=torch.tensor([encoded[1].input_ids]), use_cache=False).logits[0]
    assert not torch.allclose(leaky, alone, atol=1e-3)


def _fake_encoded(lengths: list[int]) -> list[Encoded]:
    out, tok = [], 0
    for n in lengths:
        ids = list(range(tok, tok + n))  # unique ids: each sample is identifiable in the packed rows
        tok += n
        out.append(Encoded(ids, [IGNORE] + ids[1:]))
    return out


def test_pack_examples_bounded_complete_and_efficient():
    rng = random.Random(0)
    encoded = _fake_encoded([rng.randint(35, 65) for _ in range(400)])  # ~50-token samples
    rows = pack_examples(encoded, 256)
    assert all(len(r.input_ids) <= 256 for r in rows)
    assert all(len(r.input_ids) == len(r.labels) == len(r.position_ids) for r in rows)
    # every sample exactly once, contiguous and with positions 0..n-1
    pieces = []
    for r in rows:
        starts = [i for i, p in enumerate(r.position_ids) if p == 0] + [len(r.input_ids)]
        for s, e in zip(starts, starts[1:]):
            assert r.position_ids[s:e] == list(range(e - s))
            pieces.append(tuple(r.input_ids[s:e]))
    assert Counter(pieces) == Counter(tuple(e.input_ids) for e in encoded)
    eff = packing_efficiency(rows, 256)
    assert eff > 0.85, eff
    # deterministic for a given order
    assert [r.input_ids for r in pack_examples(encoded, 256)] == [r.input_ids for r in rows]


def test_a_sample_longer_than_a_row_gets_its_own_row():
    encoded = _fake_encoded([300, 20])
    rows = pack_examples(encoded, 256)
    assert sorted(len(r.input_ids) for r in rows) == [20, 300]


def test_answer_only_labels_are_exactly_response_and_eos(tokenizer):
    ex = Example(id="1", instruction="Compute 12 + 30.", output="12 + 30 = 42")
    (enc,) = encode_examples(tokenizer, TEMPLATE, [ex], max_len=256)
    prompt = tokenizer(TEMPLATE.render(ex.instruction), add_special_tokens=False)["input_ids"]
    answer = tokenizer(ex.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert enc.input_ids == prompt + answer
    assert enc.labels == [IGNORE] * len(prompt) + answer
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE]) == ex.output + tokenizer.eos_token
    # loss_on=all: every token but the first (nothing predicts it) carries loss
    (full,) = encode_examples(tokenizer, TEMPLATE, [ex], max_len=256, loss_on="all")
    assert full.labels == [IGNORE] + (prompt + answer)[1:]


def test_truncation_keeps_the_answer_and_never_labels_a_rows_first_token(tokenizer):
    ex = Example(id="1", instruction="Compute " + " + ".join(["12"] * 40) + ".", output="480")
    for loss_on in ("assistant", "all"):
        (enc,) = encode_examples(tokenizer, TEMPLATE, [ex], max_len=32, loss_on=loss_on)
        assert enc.truncated and len(enc.input_ids) == 32
        answer = tokenizer("480", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert enc.input_ids[-len(answer):] == answer
        # in a packed row the previous sample's EOS sits before this first token: it must not be a target
        assert enc.labels[0] == IGNORE


def test_collate_packed_pads_as_own_block_and_unpacked_uses_mask():
    encoded = _fake_encoded([5, 3, 7])
    rows = pack_examples(encoded[:2], 8) + unpacked_rows(encoded[2:])
    batch = collate_rows(rows, pad_id=999, packed=True)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]  # the pad restarts at 0: its own block
    assert batch["labels"][1, -1].item() == IGNORE and batch["input_ids"][1, -1].item() == 999
    plain = collate_rows(unpacked_rows(encoded), pad_id=999, packed=False)
    assert "position_ids" not in plain
    assert plain["attention_mask"].sum(1).tolist() == [5, 3, 7]


def test_packing_real_arithmetic_samples_fills_rows(tokenizer):
    exs = examples_from_records(generate(400, seed=9), "competition")
    encoded = encode_examples(tokenizer, TEMPLATE, exs, max_len=256)
    lengths = [len(e.input_ids) for e in encoded]
    assert 30 < sum(lengths) / len(lengths) < 90
    rows = pack_examples(encoded, 256)
    assert all(len(r.input_ids) <= 256 for r in rows)
    assert sum(r.position_ids.count(0) for r in rows) == len(encoded)
    assert packing_efficiency(rows, 256) > 0.85


def test_row_stream_is_deterministic_and_reshuffles_each_epoch():
    from tunelab.train.row_stream import RowStream
    encoded = _fake_encoded([10] * 20)
    stream = RowStream(encoded, max_len=40, packing=True, seed=3)
    n = stream.rows_per_epoch
    assert n == 5  # 4 samples of 10 tokens per 40-token row
    rows = stream.rows(0, 3 * n)
    again = RowStream(encoded, max_len=40, packing=True, seed=3)
    assert [r.input_ids for r in again.rows(n - 2, 4)] == [r.input_ids for r in rows[n - 2: n + 2]]  # random access

    def samples(rs):
        return sorted(r.input_ids[i] for r in rs for i, p in enumerate(r.position_ids) if p == 0)
    starts = sorted(e.input_ids[0] for e in encoded)
    for e in range(3):  # every epoch holds every sample once, in a new order
        assert samples(rows[e * n:(e + 1) * n]) == starts
    assert [r.input_ids for r in rows[:n]] != [r.input_ids for r in rows[n:2 * n]]
    assert [r.input_ids for r in RowStream(encoded, 40, True, seed=4).rows(0, n)] != [r.input_ids for r in rows[:n]]
    unpacked = RowStream(encoded, max_len=40, packing=False, seed=3)
    assert unpacked.rows_per_epoch == 20


def test_a_row_stream_of_twenty_epochs_holds_as_much_as_one_of_two():
    """Only the epoch read and the one before it are held: memory stays flat over a long run, and a resumed
    stream (asked first for epoch 19) gives the rows an unbroken one gave."""
    import tracemalloc

    from tunelab.train.row_stream import RowStream
    rng = random.Random(1)
    encoded = _fake_encoded([rng.randint(5, 60) for _ in range(600)])

    def walk(epochs: int) -> tuple[int, list]:
        stream = RowStream(encoded, max_len=128, packing=True, seed=0)
        tracemalloc.start()
        start, last = 0, None
        for _ in range(epochs):  # an epoch's worth of rows a call: the calls straddle the epochs' ends
            last = (start, [r.input_ids for r in stream.rows(start, stream.rows_per_epoch)])
            start += len(last[1])
            assert len(stream._held) <= 2
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, last

    two, _ = walk(2)
    twenty, (start, rows) = walk(20)
    assert twenty < 1.5 * two, (twenty, two)
    resumed = RowStream(encoded, max_len=128, packing=True, seed=0)
    assert [r.input_ids for r in resumed.rows(start, len(rows))] == rows
