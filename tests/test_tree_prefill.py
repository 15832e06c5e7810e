"""The tree prefill: rows sharing prefixes run as one packed trie, each shared token once, with the logits and
KV cache of a padded prefill; used only where a check allows it, and the model's config left as it was."""

from __future__ import annotations

import random

import pytest
import torch

from tunelab.decoding.batch import DecodeBatch, tree_prefill_ok
from tunelab.decoding.tree_prefill import TreeLayout


def _rows(rng: random.Random) -> list[list[int]]:
    """Rows over a small alphabet, sharing prefixes by construction, with duplicates and rows that are
    prefixes of others."""
    base = [[rng.randrange(5) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 3))]
    rows = []
    for _ in range(rng.randint(1, 9)):
        kind = rng.random()
        if rows and kind < 0.15:
            rows.append(list(rng.choice(rows)))                                   # a duplicate
        elif rows and kind < 0.3:
            r = rng.choice(rows)
            rows.append(r[:rng.randint(1, len(r))])                               # a prefix of another row
        else:
            rows.append(rng.choice(base) + [rng.randrange(5) for _ in range(rng.randint(0, 5))])
    return [r for r in rows if r] or [[1]]


@pytest.mark.parametrize("seed", range(300))
def test_layout_holds_every_row_once_per_distinct_prefix(seed):
    """Each row's path spells the row at positions 0..len-1; there is one node per distinct prefix; every
    node's query is computed in exactly one slot of one query block, on a row whose path holds the node at
    that slot's position, and the slot sees that row's real positions up to its own and nothing else."""
    rows = _rows(random.Random(seed))
    t = TreeLayout.build(rows)
    prefixes = {tuple(r[:k]) for r in rows for k in range(1, len(r) + 1)}
    assert len(t.tokens) == len(t.positions) == len(prefixes)
    width = t.path.shape[1]
    for i, row in enumerate(rows):
        path = t.path[i][t.valid[i]].tolist()
        assert [t.tokens[p] for p in path] == row
        assert [t.positions[p] for p in path] == list(range(len(row)))
        assert t.last[i] == path[-1]
    computed = []
    for block in t.blocks:
        rows_of = list(range(len(rows))) if block.rows is None else block.rows.tolist()
        slots = block.nodes.shape[1]
        mask = block.mask(t.valid)[:, 0]
        for b, i in enumerate(rows_of):
            for j in range(slots):
                if not block.valid[b, j]:
                    continue
                at = block.end - slots + j
                assert t.valid[i, at] and t.path[i, at] == block.nodes[b, j]
                assert mask[b, j].tolist() == [bool(t.valid[i, k]) and k <= at for k in range(width)]
                computed.append(int(block.nodes[b, j]))
    assert sorted(computed) == list(range(len(t.tokens)))


def _tiny_llama():
    """A random Llama (GQA), SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _rows_with_sharing() -> list[list[int]]:
    rng = random.Random(1)
    head = [rng.randrange(3, 97) for _ in range(9)]
    passage = [rng.randrange(3, 97) for _ in range(7)]
    rows = [head + passage + [rng.randrange(3, 97) for _ in range(rng.randint(1, 6))] for _ in range(4)]
    rows += [head + [rng.randrange(3, 97) for _ in range(rng.randint(2, 12))] for _ in range(5)]
    rows += [list(rows[0]), rows[1][:12], [5, 6, 7]]          # a duplicate, a prefix of a row, one alone
    return rows


def _alone(model, rows):
    with torch.inference_mode():
        return torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])


@pytest.mark.patched
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_prefill_gives_each_rows_logits_and_cache(attn):
    """With SDPA and eager attention: the prefill's logits are each prompt's alone, and greedy decoding from
    its cache gives the tokens of a padded prefill's."""
    model = _tiny_llama()
    model.set_attn_implementation(attn)
    assert tree_prefill_ok(model)
    rows = _rows_with_sharing()
    with torch.inference_mode():
        tree, logits = DecodeBatch.prefill(model, rows, 0, 8)
        padded, want = DecodeBatch.prefill(model, rows, 0, 8, share_prefix=False)
        assert (logits - _alone(model, rows)).abs().max() < 1e-4
        for _ in range(6):
            tokens = want.argmax(-1)
            assert torch.equal(logits.argmax(-1), tokens)
            logits, want = tree.step(tokens), padded.step(tokens)
            assert (logits - want).abs().max() < 1e-4
    assert model.config._attn_implementation == attn


def test_an_attention_it_cannot_call_keeps_the_padded_prefill():
    from tunelab.model.kernels.attention import register
    model = _tiny_llama()
    register()
    model.set_attn_implementation("tunelab_cpu")
    assert not tree_prefill_ok(model)
    rows = _rows_with_sharing()
    with torch.inference_mode():
        _, logits = DecodeBatch.prefill(model, rows, 0, 4)
    assert (logits - _alone(model, rows)).abs().max() < 1e-4


def test_a_model_that_drops_keyword_arguments_keeps_the_padded_prefill():
    """The check catches an architecture whose forward does not pass keyword arguments to its attention:
    there the packed row would attend across rows."""
    from transformers import LlamaForCausalLM

    class Dropping(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, logits_to_keep=0, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache,
                                   logits_to_keep=logits_to_keep)

    base = _tiny_llama()
    model = Dropping(base.config).eval()
    model.load_state_dict(base.state_dict())
    assert not tree_prefill_ok(model)
    assert model.config._attn_implementation == "sdpa"
    rows = _rows_with_sharing()
    with torch.inference_mode():
        _, logits = DecodeBatch.prefill(model, rows, 0, 4)
    assert (logits - _alone(model, rows)).abs().max() < 1e-4


@pytest.mark.patched
def test_the_config_is_restored_when_the_forward_fails(monkeypatch):
    from tunelab.decoding import tree_prefill
    from tunelab.decoding.forward import logits_at
    from tunelab.decoding.kv_cache import reserved_cache
    model = _tiny_llama()
    assert tree_prefill_ok(model)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tree_prefill._TreePass, "__call__", boom)
    with pytest.raises(RuntimeError, match="out of memory"), torch.inference_mode():
        tree_prefill.tree_prefill(model, _rows_with_sharing(), reserved_cache(model.config, 40), 4, logits_at)
    assert model.config._attn_implementation == "sdpa" and not tree_prefill._swapped


@pytest.mark.patched
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_peft_model_with_unmerged_adapters_uses_the_trie(attn):
    """Evaluation runs LoRA checkpoints unmerged: the trie runs through peft's wrapper (whose class is the
    same for every architecture, so the check is keyed by architecture too) with the adapters applied."""
    from peft import LoraConfig, get_peft_model
    base = _tiny_llama()
    base.set_attn_implementation(attn)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False)).eval()
    assert tree_prefill_ok(model)
    rows = _rows_with_sharing()
    with torch.inference_mode():
        _, logits = DecodeBatch.prefill(model, rows, 0, 4)
        alone = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
        with model.disable_adapter():
            without = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
    assert (logits - alone).abs().max() < 1e-4
    assert (alone - without).abs().max() > 1e-3          # the adapters do change the logits


def test_a_batch_with_an_empty_row_is_prefilled_as_before():
    """An empty row has no trie node: the batch keeps the padded prefill rather than failing."""
    model = _tiny_llama()
    rows = _rows_with_sharing()
    with torch.inference_mode():
        _, got = DecodeBatch.prefill(model, rows + [[]], 0, 4)
        _, want = DecodeBatch.prefill(model, rows + [[]], 0, 4, share_prefix=False)
    assert torch.equal(got, want)


@pytest.mark.patched
def test_the_serving_engine_makes_the_check_when_it_starts_not_at_the_first_request(monkeypatch):
    """`tunelab serve`'s first request used to wait for the check (seconds on a CPU); the engine makes it as it
    starts, once."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from tunelab.decoding import batch
    from tunelab.serve.engine import Engine
    model = _tiny_llama()
    monkeypatch.setattr(batch, "_tree_verified", {})
    checked = []
    real = batch._tree_agrees
    monkeypatch.setattr(batch, "_tree_agrees", lambda m: checked.append(m) or real(m))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1},
                                                                                    unk_token="[UNK]")))
    engine = Engine(model, tokenizer, context_len=64)
    assert not checked
    with engine:
        assert checked == [model] and tree_prefill_ok(model)
    assert len(checked) == 1
