"""The patches to transformers and peft live in one list (`model.patches`), each gated: `TUNELAB_NO_PATCHES=1`
leaves every one out, a library version a patch was not written for leaves it out with one warning, and a model
trained and decoded without them gives the same numbers within rounding."""

from __future__ import annotations

import logging

import pytest
import torch

from tunelab.model import patches
from tunelab.model.patches import PATCHES, active


def _tiny_lora(dropout: float = 0.1):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"]))


@pytest.mark.patched
def test_every_patch_names_its_library_and_the_installed_versions_fit(monkeypatch):
    from packaging.specifiers import SpecifierSet
    monkeypatch.delenv(patches.ENV, raising=False)
    assert set(PATCHES) == {"rotary", "cpu_attention", "tree_attention", "lora_dropout", "lora_input_cast"}
    for patch in PATCHES.values():
        assert patch.library in ("transformers", "peft") and patch.what and patch.instead
        assert patches.library_version(patch.library) in SpecifierSet(patch.versions)  # CI runs them patched
        assert active(patch.name)


def test_no_patches_leaves_every_one_out(monkeypatch):
    import transformers.models.llama.modeling_llama as llama

    from tunelab.decoding.batch import tree_prefill_ok
    from tunelab.model.kernels.attention import use_cpu_attention
    from tunelab.model.kernels.rotary import fast_rotary
    from tunelab.model.lora import skip_lora_input_casts
    from tunelab.train.dropout import use_fast_lora_dropout
    monkeypatch.setenv(patches.ENV, "1")
    assert not any(active(name) for name in PATCHES)
    model = _tiny_lora()
    own = llama.apply_rotary_pos_emb
    with fast_rotary(model):
        assert llama.apply_rotary_pos_emb is own
    assert not use_cpu_attention(model.get_base_model())
    assert model.config._attn_implementation != "tunelab_cpu"
    assert use_fast_lora_dropout(model) == 0
    skip_lora_input_casts(model)
    from peft.tuners.tuners_utils import BaseTunerLayer
    assert all(m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer))
    assert not tree_prefill_ok(model.get_base_model())
    monkeypatch.setenv(patches.ENV, "0")  # "0" is not a request
    with fast_rotary(model):
        assert llama.apply_rotary_pos_emb is not own


def test_a_version_it_was_not_written_for_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv(patches.ENV, raising=False)
    monkeypatch.setattr(patches, "library_version", lambda library: "99.0.0")
    patches._version_fits.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tunelab.model.patches"):
            assert not active("rotary") and not active("rotary")
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1
        assert warned[0] == ("tunelab patch 'rotary' left out: written for transformers >=5.0,<6, 99.0.0 is "
                             "installed; transformers' own function runs instead")
    finally:
        patches._version_fits.cache_clear()


def _train_and_decode():
    """Three SFT steps on packed rows laid as training lays them (CPU attention and rows end to end when patched;
    no dropout, whose masks are drawn differently by design), then greedy tokens through the decoding core with
    a prefix-tree prefill when patched: (losses, LoRA weights, tokens, whether rows ran end to end)."""
    from tunelab.data.packing import Row, collate
    from tunelab.decoding.embedded import decode_rows
    from tunelab.model.kernels.attention import takes_flat_rows, use_cpu_attention
    from tunelab.train.methods.sft_loss import LabelledLoss
    model = _tiny_lora(dropout=0.0)
    use_cpu_attention(model.get_base_model())
    flat = takes_flat_rows(model.get_base_model(), 64)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (40, 23, 57):
        ids = torch.randint(3, 64, (n,), generator=g).tolist()
        rows.append(Row(input_ids=ids, labels=[-100] * 5 + ids[5:], position_ids=list(range(n)), prefix=0,
                        segments=[0] * n))
    batch = collate(rows, 0, packed=True, flat=flat)
    batch.pop("segments", None)
    loss_model = LabelledLoss(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    torch.manual_seed(5)
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_model(**batch, num_items_in_batch=int(sum(len(r.input_ids) - 5 for r in rows)))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    tokens = decode_rows(model, [[5, 9, 11, 3, 4], [5, 9, 11, 8], [7, 7, 2]], 8, frozenset(), 0, 3)[0]
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, weights, tokens, flat


def test_a_run_without_patches_gives_the_same_numbers(monkeypatch):
    monkeypatch.delenv(patches.ENV, raising=False)
    patched = _train_and_decode()
    monkeypatch.setenv(patches.ENV, "1")
    plain = _train_and_decode()
    torch.testing.assert_close(patched[0], plain[0], rtol=1e-5, atol=1e-6)
    assert patched[1].keys() == plain[1].keys()
    for name in patched[1]:
        torch.testing.assert_close(patched[1][name], plain[1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert patched[2] == plain[2]
    assert patched[3] and not plain[3]  # patched, the rows ran end to end under tunelab_cpu; plain, padded SDPA
