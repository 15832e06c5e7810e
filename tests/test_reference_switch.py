"""The one reference switch (`model.reference.reference_policy`) and the one eval-mode context (`model.eval_mode`):
the rule the switch documents (a peft model's reference is the model with its adapter off; a continued adapter's
is its frozen copy as the run started; a model without an adapter has none, and the switch says so), what both put
back after their block (training mode module by module, the active adapter, which parameters take gradients —
also when the block raises), that neither touches a dropout module's p, and that DPO, GRPO and distillation all
take their reference through the switch. A method that trains without dropout says so (`Method.disables_dropout`)
and the training setup switches it off; no loss module changes the caller's model on its own."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.model.eval_mode import eval_mode
from tunelab.model.lora import REFERENCE_ADAPTER
from tunelab.model.reference import has_reference, reference_policy

VOCAB = 48
LORA_DROPOUT = 0.1


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


def _lora(base, seed: int = 1):
    """A peft model whose adapter moves the policy (random, nonzero B), with LoRA dropout on."""
    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=LORA_DROPOUT, init_lora_weights=False,
                                           target_modules=["q_proj", "v_proj", "down_proj"]))


def _dropout_ps(model) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]


def _ids(rows: int = 2, width: int = 9) -> torch.Tensor:
    return torch.randint(1, VOCAB, (rows, width), generator=torch.Generator().manual_seed(7))


# --- eval_mode ----------------------------------------------------------------------------------------------

def test_eval_mode_puts_every_modules_own_mode_back_also_when_the_block_raises():
    model = _lora(_llama())
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    frozen.eval()  # a module not in its parent's mode keeps its own
    before = [m.training for m in model.modules()]
    ps = _dropout_ps(model)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before
    assert _dropout_ps(model) == ps == [LORA_DROPOUT] * len(ps) and ps  # p is never touched
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())  # an eval model stays in eval


# --- the reference switch: the rule -------------------------------------------------------------------------

def test_a_peft_models_reference_is_the_model_with_its_adapter_off_in_eval_mode_without_gradients():
    base = _llama()
    frozen_base = copy.deepcopy(base).eval()
    model = _lora(base)
    model.train()
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = _ids()
    assert has_reference(model)
    with reference_policy(model):
        assert not torch.is_grad_enabled() and not model.training
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, frozen_base(input_ids=ids).logits)
    # after: training mode, the adapter on, the same parameters taking gradients, dropout as it was
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert set(_dropout_ps(model)) == {LORA_DROPOUT}
    with torch.no_grad():
        assert not torch.allclose(model.eval()(input_ids=ids).logits, got)


def test_a_continued_adapters_reference_is_its_frozen_copy_as_the_run_started(tmp_path):
    _lora(_llama()).save_pretrained(tmp_path / "adapter")  # the adapter a run continues (the same base: seed 0)
    started = PeftModel.from_pretrained(_llama(), tmp_path / "adapter").eval()
    model = PeftModel.from_pretrained(_llama(), tmp_path / "adapter", is_trainable=True)
    model.load_adapter(tmp_path / "adapter", adapter_name=REFERENCE_ADAPTER)  # as train.setup loads it
    model.set_adapter("default")
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():  # the run trains: its adapter moves away from where it started
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ids = _ids()
    model.train()
    with reference_policy(model):
        assert model.active_adapter == REFERENCE_ADAPTER
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, started(input_ids=ids).logits)
    assert model.active_adapter == "default" and model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    with torch.no_grad():
        assert not torch.allclose(model.eval()(input_ids=ids).logits, got)


def test_a_model_without_an_adapter_has_no_reference_and_the_switch_says_so():
    model = _llama().train()
    assert not has_reference(model)
    with pytest.raises(ValueError, match="no adapter"):
        with reference_policy(model):
            pytest.fail("the policy became its own reference")
    assert model.training


def test_the_switch_puts_everything_back_when_the_block_raises():
    base = _llama()
    frozen_base = copy.deepcopy(base).eval()
    model = _lora(base).train()
    with pytest.raises(RuntimeError, match="inside"):
        with reference_policy(model):
            raise RuntimeError("inside")
    assert model.training and all(m.training for m in model.modules()) and torch.is_grad_enabled()
    with torch.no_grad():  # the adapter is on again
        ids = _ids()
        assert not torch.allclose(model.eval()(input_ids=ids).logits, frozen_base(input_ids=ids).logits)


# --- the three methods take their reference through it ------------------------------------------------------

def _preference_batch():
    ids = _ids(4, 10)
    attention = torch.ones_like(ids)
    completion = torch.zeros_like(ids)
    completion[:, 5:] = 1
    return ids, attention, completion


def _grpo_batch():
    from tunelab.train.methods.grpo_loss import collate_completions
    prompts = [[3, 4, 5, 6], [3, 4, 5, 6], [7, 8, 9], [7, 8, 9]]
    completions = [[10, 11, 2], [12, 2], [13, 14, 15, 16], [17]]
    return collate_completions(prompts, completions, pad_id=0, stop_ids=[2])


def test_dpo_grpo_and_distillation_take_the_one_reference():
    from tunelab.data.packing import Encoded, collate_rows, unpacked_rows
    from tunelab.recipe.train import DistillConfig
    from tunelab.train.methods import dpo_loss, grpo
    from tunelab.train.methods.distill_loss import DistilledLoss
    from tunelab.train.methods.grpo_loss import completion_token_logps
    base = _llama()
    frozen_base = copy.deepcopy(base).eval()
    model = _lora(base).train()
    ps = _dropout_ps(model)

    ids, attention, completion = _preference_batch()
    torch.testing.assert_close(dpo_loss.reference_logps(model, ids, attention, completion),
                               dpo_loss.answer_logps(frozen_base, ids, attention, completion)[0].detach())
    batch = _grpo_batch()
    want = completion_token_logps(frozen_base, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                  batch["completion_mask"], 0.7)[0].detach()
    torch.testing.assert_close(grpo.reference_logps(model, None, batch, 0.7), want)
    teacher = DistilledLoss(model, DistillConfig(tokens="all"))
    with teacher._as_teacher():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, frozen_base(input_ids=ids).logits)
    assert model.training and all(m.training for m in model.modules()) and _dropout_ps(model) == ps

    # without an adapter, each of them is refused by the same switch instead of comparing the policy with itself
    plain = _llama().train()
    with pytest.raises(ValueError, match="no adapter"):
        dpo_loss.reference_logps(plain, ids, attention, completion)
    with pytest.raises(ValueError, match="no adapter"):
        grpo.reference_logps(plain, None, batch)
    rows = collate_rows(unpacked_rows([Encoded([1, 5, 6, 7], [-100, 5, 6, 7])]), 0, packed=False)
    with pytest.raises(ValueError, match="no adapter"):
        DistilledLoss(plain, DistillConfig(tokens="all"))(**rows, num_items_in_batch=3)
    assert plain.training

    # precomputed reference log-probabilities need no switch: a plain model trains DPO against them
    policy, per_token = dpo_loss.answer_logps(plain, ids, attention, completion)
    loss, _ = dpo_loss.preference_loss(dpo_loss.PreferenceLoss("sigmoid"), policy, completion,
                                       policy.detach() - 0.5, per_token)
    loss.backward()


# --- dropout: off where the method says so, by the setup, never by a loss module ----------------------------

def test_loss_modules_leave_the_callers_dropout_alone_and_the_methods_declare_theirs():
    from tunelab.recipe.train import DistillConfig
    from tunelab.train.dropout import disable_dropout
    from tunelab.train.methods import METHODS
    from tunelab.train.methods.distill_loss import DistilledLoss
    from tunelab.train.methods.dpo_loss import PreferenceLoss, PreferenceLossModel
    from tunelab.train.methods.own_samples import SamplingLossModel
    model = _lora(_llama())
    ps = _dropout_ps(model)
    PreferenceLossModel(model, PreferenceLoss())
    DistilledLoss(model, DistillConfig())
    tokenizer = types.SimpleNamespace(eos_token_id=2, pad_token_id=0, chat_template=None)  # what the stops read
    settings = types.SimpleNamespace(max_completion_length=4, temperature=1.0, top_p=1.0, top_k=0)
    SamplingLossModel(model, settings, tokenizer, None, seed=0, key="grpo")  # grpo's and rft's loss modules
    assert _dropout_ps(model) == ps and set(ps) == {LORA_DROPOUT}
    assert {name for name, m in METHODS.items() if m.disables_dropout} == {"dpo", "grpo", "rft"}
    assert disable_dropout(model) == len(ps) and set(_dropout_ps(model)) == {0.0}
