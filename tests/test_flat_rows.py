"""Packed rows laid end to end (`collate_flat`): training on CPU computes no padding, and what it computes is
what the padded grid of rows computes — the same loss, count and gradients — for fine-tuning samples (with
and without a shared prefix), samples scored on every token, corpus blocks, grouped-query attention, LoRA and
bf16 autocast; the training loop uses it where the attention allows and says so."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.synthetic.arithmetic import generate
from tunelab.data.formats import examples_from_records
from tunelab.data.packing import IGNORE, Encoded, collate_flat, collate_rows, encode_examples, pack_examples, \
    shared_prefix
from tunelab.data.templates import PromptTemplate
from tunelab.model.kernels.attention import takes_flat_rows, use_cpu_attention
from tunelab.model.loading import build_from_scratch
from tunelab.model.tokenizer import train_bpe_tokenizer
from tunelab.train.methods.sft_loss import LabelledLoss

pytestmark = pytest.mark.patched  # the patch itself: skipped under TUNELAB_NO_PATCHES=1

TEMPLATE = PromptTemplate("alpaca")


@pytest.fixture(scope="module")
def tokenizer():
    examples = examples_from_records(generate(60, seed=7, lang="mix"), "competition")
    return train_bpe_tokenizer((TEMPLATE.render(e.instruction, e.input) + e.output for e in examples), 400)


@pytest.fixture(scope="module")
def encoded(tokenizer):
    examples = examples_from_records(generate(60, seed=7, lang="mix"), "competition")
    return encode_examples(tokenizer, TEMPLATE, examples, max_len=256)


def _model(tokenizer, **overrides):
    torch.manual_seed(0)
    model = build_from_scratch("micro", len(tokenizer), overrides, tokenizer)
    assert use_cpu_attention(model) and takes_flat_rows(model, 128)
    return model.train()


def _loss_and_grads(model, batch, items, dtype=None):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = LabelledLoss(model)(**batch, num_items_in_batch=items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_training(model, rows, pad_id, dtype=None):
    grid, flat = collate_rows(rows, pad_id, True), collate_flat(rows)
    assert flat["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows))  # not one padding token
    assert flat["attention_mask"].numel() <= grid["input_ids"].shape[1] ** 2 * (len(rows) + 1)  # no mask a sample
    assert len(flat["row_lengths"]) == len(flat["span_masks"]) and sum(flat["row_lengths"]) == flat[
        "input_ids"].shape[1]
    items = int((grid["labels"][:, 1:] != IGNORE).sum())
    assert items == int((flat["labels"][:, 1:] != IGNORE).sum()) > 0
    la, ga = _loss_and_grads(model, grid, items, dtype)
    lb, gb = _loss_and_grads(model, flat, items, dtype)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(la, lb, **tol)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], msg=name, **tol)


@pytest.mark.parametrize("prefix", [False, True])
def test_flat_rows_train_as_the_padded_grid(encoded, tokenizer, prefix):
    rows = pack_examples(encoded[:40], 128, prefix=shared_prefix(encoded) if prefix else 0)
    assert len({len(r.input_ids) for r in rows}) > 1  # rows of different lengths: the grid pads some
    _assert_same_training(_model(tokenizer), rows, tokenizer.pad_token_id)


def test_a_rows_first_token_is_never_predicted_from_the_row_before(tokenizer):
    """Samples scored on every token: a row's first label is dropped by the shift in the grid, so the flat
    sequence must drop it too rather than predict it from the previous row's last token."""
    g = torch.Generator().manual_seed(3)
    samples = [torch.randint(5, len(tokenizer), (int(n),), generator=g).tolist()
               for n in torch.randint(5, 60, (30,), generator=g)]
    rows = pack_examples([Encoded(s, list(s)) for s in samples], 128)
    assert all(r.labels[0] != IGNORE for r in rows)
    _assert_same_training(_model(tokenizer), rows, tokenizer.pad_token_id)


def test_grouped_query_attention_lora_and_bf16(encoded, tokenizer):
    from peft import LoraConfig, get_peft_model
    rows = pack_examples(encoded[:30], 128)
    model = _model(tokenizer, num_attention_heads=4, num_key_value_heads=2)
    _assert_same_training(model, rows, tokenizer.pad_token_id)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # B starts at zero, which would leave A without a gradient
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    _assert_same_training(lora, rows, tokenizer.pad_token_id)
    _assert_same_training(lora, rows, tokenizer.pad_token_id, torch.bfloat16)


def _corpus_rows(tokenizer, count=6):
    """Rows as `CorpusRows` builds them: several blocks a row, positions restarting, each block's first token
    unscored."""
    from tunelab.data.packing import Row
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(count):
        row = Row()
        for n in torch.randint(3, 40, (3,), generator=g).tolist():
            ids = torch.randint(5, len(tokenizer), (n,), generator=g).tolist()
            row.input_ids += ids
            row.labels += [IGNORE] + ids[1:]
            row.position_ids += range(n)
        rows.append(row)
    return rows


def test_corpus_blocks_train_as_the_padded_grid(tokenizer):
    _assert_same_training(_model(tokenizer), _corpus_rows(tokenizer), tokenizer.pad_token_id)


def test_validation_loss_is_the_same_with_flat_rows(tokenizer):
    from tunelab.train.validation import validation_sums
    blocks = _corpus_rows(tokenizer, 7)  # batches of 3: the last one holds a single row

    class Stream:
        rows_per_epoch = len(blocks)

        def rows(self, start, count):
            return blocks[start: start + count]
    loss_model = LabelledLoss(_model(tokenizer))
    given = dict(batch_size=3, pad_id=tokenizer.pad_token_id, packed=True, device=torch.device("cpu"),
                 autocast_dtype=None)
    grid = validation_sums(loss_model, Stream(), **given)
    flat = validation_sums(loss_model, Stream(), **given, flat=True)
    assert grid[1] == flat[1] == sum(len(r.input_ids) - r.labels.count(IGNORE) for r in blocks)
    assert flat[0] == pytest.approx(grid[0], rel=1e-5)
    assert loss_model.training  # validation leaves the model as it found it


def test_where_the_attention_cannot_take_flat_rows(tokenizer):
    from tunelab.model.kernels.attention import cpu_attention
    model = _model(tokenizer)
    assert takes_flat_rows(model, 10 ** 6)  # Llama has no sliding window
    model.config.sliding_window = 64  # a window shorter than a row: the rows' own masks would ignore it
    assert not takes_flat_rows(model, 128) and takes_flat_rows(model, 64)
    model.config.sliding_window = None
    model.config.attention_dropout = 0.1
    assert not takes_flat_rows(model, 128)
    q = torch.randn(1, 2, 6, 8)
    with pytest.raises(ValueError, match="row_lengths"):  # never a silent fall-back to attention across rows
        cpu_attention(None, q, q, q, torch.ones(2, 1, 3, 3, dtype=torch.bool), dropout=0.1, row_lengths=(3, 3),
                      span_masks=(0, 1))


def test_training_uses_flat_rows_on_cpu(make_recipe):
    from tunelab.recipe import load_recipe
    from tunelab.train.loop import train
    assert train(load_recipe(make_recipe("flat", train={"max_steps": 2})))["flat_rows"] is True
    assert train(load_recipe(make_recipe("grid", data={"packing": False}, train={"max_steps": 2})))["flat_rows"] \
        is False
