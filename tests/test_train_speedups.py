"""The CPU training speed-ups must not change what is computed: LoRA dropout keeps its distribution and
reproducibility, and the packed-row attention gives the same outputs as transformers' SDPA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunelab.model.kernels.attention import NAME, use_cpu_attention
from tunelab.train.dropout import FastDropout, keep_mask, use_fast_lora_dropout


def test_keep_mask_has_the_requested_rate_and_is_reproducible():
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1000, 997]), 0.95)  # odd size: the 64-bit words do not divide it
    assert mask.shape == (1000, 997) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.95) < 0.001  # 1M draws: sd 0.0002
    rows = mask.float().mean(dim=1)
    assert rows.min() > 0.9 and rows.max() < 1.0  # no stuck rows or columns from the bit slicing
    torch.manual_seed(0)
    assert torch.equal(keep_mask(torch.Size([1000, 997]), 0.95), mask)
    assert not torch.equal(keep_mask(torch.Size([1000, 997]), 0.95), mask)


def test_fast_dropout_scales_kept_values_and_routes_gradients_through_the_mask():
    drop = FastDropout(0.25)
    x = torch.randn(64, 128, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert 0.70 < kept.float().mean().item() < 0.80
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    drop.eval()
    assert torch.equal(drop(x), x)
    x32 = torch.randn(8, 8, dtype=torch.bfloat16)
    assert FastDropout(0.1).train()(x32).dtype == torch.bfloat16


def _llama(vocab=97, heads=4, kv_heads=4):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


@pytest.mark.patched
def test_peft_lora_dropouts_are_swapped_and_training_stays_reproducible():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                target_modules=["q_proj", "v_proj"]))
    assert use_fast_lora_dropout(model) == 4  # 2 layers x (q, v)
    assert all(isinstance(m, FastDropout) and m.p == 0.1 for m in model.modules() if isinstance(m, nn.Dropout))
    with torch.no_grad():  # B starts at zero, which would hide the dropout on A's input
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.train()
    ids = torch.randint(0, 97, (2, 12))

    def loss(seed):
        torch.manual_seed(seed)
        return model(input_ids=ids, labels=ids).loss.item()
    assert loss(3) == loss(3)
    assert loss(3) != loss(4)  # the masks do change the output


@pytest.mark.patched
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cpu_attention_matches_sdpa_on_packed_rows(kv_heads):
    model = _llama(kv_heads=kv_heads)
    lengths = [[7, 12, 5], [20, 4]]  # two packed rows of 24 tokens, samples restart their positions
    ids = torch.randint(1, 97, (2, 24))
    pos = torch.tensor([sum((list(range(n)) for n in row), []) for row in lengths])
    ref = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert use_cpu_attention(model) and model.config._attn_implementation == NAME
    got = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert torch.allclose(got, ref, atol=1e-5)
    # and each sample sees only itself: its logits equal those of the sample run alone
    single = model(input_ids=ids[0:1, 7:19], use_cache=False).logits
    assert torch.allclose(got[0, 7:19], single[0], atol=1e-5)


def test_cpu_attention_handles_bf16_autocast_and_left_padding():
    model = _llama()
    ids = torch.randint(1, 97, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # left padding: the padded queries see nothing and must not become NaN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(input_ids=ids, attention_mask=mask).logits.float()
        use_cpu_attention(model)
        got = model(input_ids=ids, attention_mask=mask).logits.float()
    assert torch.isfinite(got).all()
    assert torch.allclose(got[:, :][mask.bool()], ref[mask.bool()], atol=0.05)


def test_cpu_attention_is_not_saved_with_the_model(tmp_path):
    from transformers import AutoModelForCausalLM
    model = _llama()
    use_cpu_attention(model)
    model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation != NAME


@pytest.mark.patched
def test_decoding_runs_under_sdpa_and_training_gets_its_attention_back():
    """GRPO samples with the model it trains: decode steps run under SDPA (`decoding_attention`), with what
    SDPA gives, and the training attention is back afterwards, also after an error inside."""
    from peft import LoraConfig, get_peft_model

    from tunelab.model.kernels.attention import decoding_attention
    model = get_peft_model(_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(1, 97, (3, 9))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    assert use_cpu_attention(model.get_base_model())
    with decoding_attention(model), torch.no_grad():
        assert model.get_base_model().config._attn_implementation == "sdpa"
        assert torch.equal(model(input_ids=ids).logits, want)
    assert model.get_base_model().config._attn_implementation == NAME
    with pytest.raises(RuntimeError), decoding_attention(model):
        raise RuntimeError("a failed rollout")
    assert model.get_base_model().config._attn_implementation == NAME


def _packed_batch(vocab=97):
    torch.manual_seed(1)
    ids = torch.randint(1, vocab, (2, 24))
    labels = ids.clone()
    labels[:, :10] = -100  # prompt positions carry no label
    labels[1, 20:] = -100
    pos = torch.tensor([list(range(12)) + list(range(12)), list(range(24))])
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


@pytest.mark.parametrize("lora", [False, True])
def test_labelled_loss_equals_the_models_own_loss_and_gradients(lora):
    from peft import LoraConfig, get_peft_model

    from tunelab.train.methods.sft_loss import LabelledLoss
    model = _llama()
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_()
    batch = _packed_batch()
    items = int((batch["labels"][:, 1:] != -100).sum())
    wrapped = LabelledLoss(model)
    assert wrapped.labelled_only
    assert sum(1 for _ in wrapped.parameters()) == sum(1 for _ in model.parameters())

    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    ref, ref_grads = loss_and_grads(lambda: model(**batch, use_cache=False, num_items_in_batch=items).loss)
    got, got_grads = loss_and_grads(lambda: wrapped(**batch, num_items_in_batch=items))
    assert got == pytest.approx(ref, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_grads, ref_grads))


def test_labelled_loss_leaves_models_with_a_special_head_to_their_own_forward():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tunelab.train.methods.sft_loss import LabelledLoss
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=30.0))
    wrapped = LabelledLoss(model)
    assert not wrapped.labelled_only  # soft-capped logits: the plain projection would be wrong
    batch = _packed_batch()
    items = int((batch["labels"][:, 1:] != -100).sum())
    assert wrapped(**batch, num_items_in_batch=items).item() == pytest.approx(
        model(**batch, use_cache=False, num_items_in_batch=items).loss.item())


def test_cpu_attention_leaves_soft_capped_attention_alone():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           attn_implementation="eager"))
    assert not use_cpu_attention(model)  # SDPA would drop Gemma-2's attention soft-capping
    assert model.config._attn_implementation == "eager"


@pytest.mark.patched
def test_skipping_peft_input_casts_under_autocast_changes_no_value():
    from peft import LoraConfig, get_peft_model

    from tunelab.model.lora import skip_lora_input_casts
    model = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                target_modules=["q_proj", "v_proj", "o_proj"]))
    use_fast_lora_dropout(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.train()
    batch = _packed_batch()
    seen = []
    o_dropout = next(m for n, m in model.named_modules() if n.endswith("o_proj.lora_dropout.default"))
    o_dropout.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))

    def run():
        model.zero_grad()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    ref_loss, ref_grads = run()
    skip_lora_input_casts(model)
    loss, grads = run()
    assert seen == [torch.float32, torch.bfloat16]  # the up-cast happened before, and is gone now
    assert loss == ref_loss
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_projected_cross_entropy_matches_autograd_chunk_by_chunk(frozen_head, dtype):
    import torch.nn.functional as F

    from tunelab.model.kernels.logprobs import ProjectedCrossEntropy
    torch.manual_seed(0)
    n, vocab = 1100, 4096  # three chunks of 512 positions
    weight = (torch.randn(vocab, 16) * 0.3).requires_grad_(not frozen_head)
    targets = torch.randint(0, vocab, (n,))

    def run(fn):
        hidden = torch.randn(n, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = fn(hidden)
        (loss * 2).backward()  # the incoming gradient (DDP: the world size) scales both gradients
        return loss.item(), hidden.grad, weight.grad
    ref = run(lambda h: F.cross_entropy(F.linear(h, weight).float(), targets, reduction="sum") / n)
    got = run(lambda h: ProjectedCrossEntropy.apply(h, weight, targets, n))
    assert got[0] == pytest.approx(ref[0], rel=1e-6)
    assert (got[2] is None) == (ref[2] is None) == frozen_head
    for a, b in zip(got[1:], ref[1:]):
        if b is not None:  # bf16: the same rounding as autograd's, up to the order of a few sums; fp32: the
            # 1/count scale inside the matmuls and the head's gradient summed chunk by chunk round differently
            assert torch.allclose(a, b, rtol=1e-3 if dtype == torch.bfloat16 else 1e-5,
                                  atol=(1e-5 if dtype == torch.bfloat16 else 1e-6) * b.abs().max().item())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        assert ProjectedCrossEntropy.apply(torch.randn(n, 16, generator=torch.Generator().manual_seed(1)), weight,
                                           targets, n).item() == pytest.approx(ref[0], rel=1e-6)
