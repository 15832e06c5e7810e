"""`data.share_prefix`: packed rows hold the template header every sample starts with once, each sample
attending to it and to itself — the same logits, loss and gradients as rows that repeat it, more samples a row."""

from __future__ import annotations

import logging

import pytest
import torch

from tunelab.data.synthetic.arithmetic import generate
from tunelab.data.formats import examples_from_records
from tunelab.data.packing import IGNORE, collate_rows, encode_examples, pack_examples, shared_prefix
from tunelab.data.templates import PromptTemplate
from tunelab.model.loading import build_from_scratch
from tunelab.model.tokenizer import train_bpe_tokenizer

TEMPLATE = PromptTemplate("alpaca")


@pytest.fixture(scope="module")
def examples():
    return examples_from_records(generate(80, seed=5, lang="mix"), "competition")


@pytest.fixture(scope="module")
def tokenizer(examples):
    return train_bpe_tokenizer((TEMPLATE.render(e.instruction, e.input) + e.output for e in examples), 400)


@pytest.fixture(scope="module")
def encoded(examples, tokenizer):
    return encode_examples(tokenizer, TEMPLATE, examples, max_len=256)


def test_the_shared_prefix_is_the_template_header_and_nothing_learnt(encoded, tokenizer):
    h = shared_prefix(encoded)
    header = tokenizer(TEMPLATE.render("x", "")[:TEMPLATE.render("x", "").index("x")],
                       add_special_tokens=False)["input_ids"]
    assert h >= 4 and all(e.input_ids[:h] == encoded[0].input_ids[:h] for e in encoded)
    assert h <= len(header) + 1
    assert all(label == IGNORE for e in encoded for label in e.labels[:h + 1])
    # loss on the prompt too: nothing may be shared, the prompt's tokens are learnt from
    learnt = [type(e)(e.input_ids, list(e.input_ids)) for e in encoded]
    assert shared_prefix(learnt) == 0
    # one sample without the header: nothing shared
    assert shared_prefix(encoded + [type(encoded[0])([7, 8, 9, 10, 11], [IGNORE] * 5)]) == 0


def test_rows_hold_every_sample_once_with_its_positions_and_labels(encoded):
    h = shared_prefix(encoded)
    rows = pack_examples(encoded, 256, prefix=h)
    plain = pack_examples(encoded, 256)
    assert len(rows) < len(plain)
    seen = []
    for row in rows:
        assert len(row.input_ids) <= 256 and row.segments[:h] == [0] * h
        for k in range(1, max(row.segments) + 1):
            at = [i for i, s in enumerate(row.segments) if s == k]
            sample = row.input_ids[:h] + [row.input_ids[i] for i in at]
            assert [row.position_ids[i] for i in at] == list(range(h, len(sample)))
            labels = row.labels[:h] + [row.labels[i] for i in at]
            seen.append((tuple(sample), tuple(labels)))
        assert row.sample_tokens == sum(len(s) for s, _ in seen[-max(row.segments):])
    assert sorted(seen) == sorted((tuple(e.input_ids), tuple(e.labels)) for e in encoded)


@pytest.mark.parametrize("attention", ["sdpa", "eager", pytest.param("tunelab_cpu", marks=pytest.mark.patched)])
def test_loss_and_gradients_equal_rows_that_repeat_the_header(encoded, tokenizer, attention):
    """The same samples, grouped the same way, with the header shared and repeated: the model's logits at every
    sample token, the training loss and every parameter's gradient agree."""
    from tunelab.model.kernels.attention import use_cpu_attention
    from tunelab.train.methods.sft_loss import LabelledLoss
    torch.manual_seed(0)
    model = build_from_scratch("micro", len(tokenizer), {}, tokenizer)
    if attention == "tunelab_cpu":
        assert use_cpu_attention(model)
    elif attention == "eager":  # adds its mask to the scores: the boolean 4-D mask must become 0 / lowest
        model.set_attn_implementation("eager")
    h = shared_prefix(encoded)
    shared = pack_examples(encoded[:40], 256, prefix=h)
    # the same grouping without sharing: each shared row's samples laid end to end
    groups = []
    for row in shared:
        samples = []
        for k in range(1, max(row.segments) + 1):
            at = [i for i, s in enumerate(row.segments) if s == k]
            samples.append(next(e for e in encoded if e.input_ids == row.input_ids[:h] + [row.input_ids[i] for i in at]))
        groups.append(samples)
    repeated = [pack_examples(g, 10 ** 6)[0] for g in groups]
    pad = tokenizer.pad_token_id
    a, b = collate_rows(shared, pad, True), collate_rows(repeated, pad, True)
    assert a["attention_mask"].shape == (len(shared), 1, a["input_ids"].shape[1], a["input_ids"].shape[1])
    items = int((a["labels"][:, 1:] != IGNORE).sum())
    assert items == int((b["labels"][:, 1:] != IGNORE).sum())

    def loss_and_grads(batch):
        model.zero_grad()
        loss = LabelledLoss(model)(**batch, num_items_in_batch=items)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    la, ga = loss_and_grads(a)
    lb, gb = loss_and_grads(b)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_with_share_prefix_logs_sample_tokens(make_recipe):
    """A run with `data.share_prefix` packs fewer rows an epoch, and logs the samples' tokens per second
    beside the tokens it fed."""
    import json

    from tunelab.recipe import load_recipe
    from tunelab.train.loop import train
    summaries, metrics = {}, {}
    for share in (False, True):
        recipe = load_recipe(make_recipe(f"share{share}", data={"share_prefix": share},
                                         train={"max_steps": 4, "log_every": 2}))
        summaries[share] = train(recipe)
        lines = (recipe.run_dir / "metrics.jsonl").read_text().splitlines()
        metrics[share] = [r for r in map(json.loads, lines) if "loss" in r]
    assert summaries[True]["rows_per_epoch"] < summaries[False]["rows_per_epoch"]
    assert summaries[True]["shared_prefix"] >= 4 and "shared_prefix" not in summaries[False]
    assert metrics[True] and all(r["sample_tokens_per_s"] > r["tokens_per_s"] for r in metrics[True])
    assert all("sample_tokens_per_s" not in r for r in metrics[False])


def test_an_attention_without_4d_masks_trains_without_sharing(make_recipe, monkeypatch, caplog):
    """Flash attention's packed path reads position ids and takes no 4-D mask: there the rows repeat the header."""
    from tunelab.recipe import load_recipe
    from tunelab.model.kernels import attention
    from tunelab.train import loop
    monkeypatch.setattr(attention, "MASKED_ATTENTION", ())
    caplog.set_level(logging.INFO, logger="tunelab")  # the start-up notes are logged (the CLI prints them)
    summary = loop.train(load_recipe(make_recipe("flash", data={"share_prefix": True}, train={"max_steps": 2})))
    assert "shared_prefix" not in summary
    assert "share_prefix: off (the model's" in caplog.text
