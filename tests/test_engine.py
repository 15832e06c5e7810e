"""The batched engine must give exactly what `model.generate` gives one prompt at a time (greedy)."""

from __future__ import annotations

import pytest

from tunelab.data.synthetic.arithmetic import generate
from tunelab.data.formats import reading_instruction
from tunelab.data.synthetic.reading import generate as generate_reading
from tunelab.data.templates import PromptTemplate
from tunelab.decoding.embedded import generate_batched


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    from tunelab.model.loading import load_for_inference
    return load_for_inference(str(tiny_base))


def _prompts(n: int) -> list[str]:
    t = PromptTemplate("alpaca")
    arith = [t.render(r["problem"]) for r in generate(n, seed=3, kinds=["int_add", "int_sub", "average"])]
    reading = [t.render(reading_instruction(r["context"], r["question"])) for r in generate_reading(n, seed=4)]
    return [p for pair in zip(arith, reading) for p in pair]  # mixed lengths, zh and en


def _one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    import torch
    out = []
    with torch.inference_mode():
        for p in prompts:
            enc = tokenizer(p, return_tensors="pt", add_special_tokens=False)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batched_greedy_equals_generate_one_by_one(model_and_tokenizer, batch_size):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(12)
    expected = _one_at_a_time(model, tokenizer, prompts, 20)
    got = generate_batched(model, tokenizer, prompts, max_new_tokens=20, batch_size=batch_size, progress=False)
    assert got == expected


def test_results_come_back_in_input_order_and_padding_side_is_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(6)
    side = tokenizer.padding_side
    forward = generate_batched(model, tokenizer, prompts, max_new_tokens=8, batch_size=4, progress=False)
    backward = generate_batched(model, tokenizer, prompts[::-1], max_new_tokens=8, batch_size=4, progress=False)
    assert backward == forward[::-1]
    assert tokenizer.padding_side == side


def test_zero_prompts_and_one_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert generate_batched(model, tokenizer, [], progress=False) == []
    one = generate_batched(model, tokenizer, _prompts(2), max_new_tokens=1, progress=False)
    assert len(one) == 4 and all(len(tokenizer(x, add_special_tokens=False)["input_ids"]) <= 1 for x in one)


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    from tunelab.decoding.batch import shared_prefix_length
    header = [7, 8, 9, 10, 11, 12]
    assert shared_prefix_length([header + [1, 2], header + [3], header + [1, 5]]) == 6
    assert shared_prefix_length([header, header + [3]]) == 5  # the shorter row keeps its last token
    assert shared_prefix_length([[1, 2, 3, 9, 9], [1, 2, 3, 8, 8]]) == 0  # 3 tokens: not worth a pass
    assert shared_prefix_length([header + [1]]) == 0  # one row: nothing to share


def test_a_batch_that_shares_only_a_header_still_matches_generate(model_and_tokenizer):
    # every prompt starts with the same long header and differs after it: the shared-prefix prefill,
    # the pads between header and rest, and rows finishing at different steps all meet here
    model, tokenizer = model_and_tokenizer
    prompts = [p.replace("### Instruction:", "### Instruction: 请计算。Compute.") for p in _prompts(5)]
    expected = _one_at_a_time(model, tokenizer, prompts, 12)
    assert generate_batched(model, tokenizer, prompts, max_new_tokens=12, batch_size=10, progress=False) == expected


def test_reserved_cache_layer_behaves_like_transformers_dynamic_layer():
    import torch
    from transformers.cache_utils import DynamicLayer

    from tunelab.decoding.kv_cache import ReservedLayer
    torch.manual_seed(0)
    ours, ref = ReservedLayer(capacity=6, grow=2), DynamicLayer()

    def both(op, *args):
        a, b = getattr(ours, op)(*args), getattr(ref, op)(*args)
        assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)
        return a, b
    both("update", torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5))      # prefill
    for _ in range(5):                                                    # decode past the reserved room
        both("update", torch.randn(3, 2, 1, 5), torch.randn(3, 2, 1, 5))
    both("batch_select_indices", torch.tensor([2, 0]))
    both("update", torch.randn(2, 2, 1, 5), torch.randn(2, 2, 1, 5))
    for layer in (ours, ref):  # a caller replaces the keys, as the server does when it trims a cache
        layer.keys, layer.values = layer.keys[:, :, 3:], layer.values[:, :, 3:]
    both("update", torch.randn(2, 2, 1, 5), torch.randn(2, 2, 1, 5))
    both("batch_repeat_interleave", 2)
    both("update", torch.randn(4, 2, 1, 5), torch.randn(4, 2, 1, 5))
    assert ours.get_seq_length() == ref.get_seq_length() == 9
    ours, ref = ReservedLayer(capacity=8, grow=2), DynamicLayer()   # repeating rows of its own buffer
    both("update", torch.randn(2, 2, 3, 5), torch.randn(2, 2, 3, 5))
    both("batch_repeat_interleave", 3)
    for _ in range(6):                                                    # into the room, then past it
        both("update", torch.randn(6, 2, 1, 5), torch.randn(6, 2, 1, 5))


def test_reserved_cache_crop_and_append_rows_equal_slicing_and_left_padded_cat():
    # the decode loop drops padding columns (crop_front) and merges a newly prefilled batch (append_rows)
    # without the copies DynamicLayer needs; the result must be exactly the slice / zero-left-padded cat
    import torch
    import torch.nn.functional as F

    from tunelab.decoding.kv_cache import ReservedLayer
    torch.manual_seed(0)
    a, b = ReservedLayer(capacity=4, grow=3), ReservedLayer(capacity=9, grow=3)
    a.update(torch.randn(2, 2, 4, 5), torch.randn(2, 2, 4, 5))
    b.update(torch.randn(3, 2, 6, 5), torch.randn(3, 2, 6, 5))
    a.crop_front(1)
    assert a.get_seq_length() == 3
    expect_k = torch.cat([F.pad(a.keys, (0, 0, 3, 0)), b.keys])
    expect_v = torch.cat([F.pad(a.values, (0, 0, 3, 0)), b.values])
    a.append_rows(b, 6)
    assert torch.equal(a.keys, expect_k) and torch.equal(a.values, expect_v)
    step = torch.randn(5, 2, 1, 5)
    a.update(step, step)                      # the merged buffer kept room: the next step writes in place
    assert a.get_seq_length() == 7 and torch.equal(a.keys[:, :, -1:], step)
    assert torch.equal(a.keys[:, :, :6], expect_k)
