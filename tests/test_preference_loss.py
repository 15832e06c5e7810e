"""tunelab's preference losses against TRL itself (`trl` 1.16, a test dependency): on a tiny random Llama with a
LoRA adapter, TRL's `DPOTrainer` builds and collates the batch, computes its loss and logs its metrics; tunelab's
`tunelab.train.methods.dpo_loss` computes them from the same batch. Loss, every logged reward/log-prob metric and the
adapter's gradients agree, for `sigmoid`, `ipo` and `sigmoid` + `sft`, over several datasets and β. SimPO is
checked against TRL's `CPOTrainer.cpo_loss` and its length-averaged log-probabilities."""

from __future__ import annotations

import types

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402  (trl's own dependency)
from peft import LoraConfig  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from tunelab.train.methods.dpo_loss import (PreferenceLoss, answer_logps, preference_loss,  # noqa: E402
                                      reference_logps)

PROMPTS = ["1+1=", "2+3=", "7-4=", "你好，", "The capital of France is", "9*9=", "写一句诗：", "hello "]
CHOSEN = ["2", "5", "3", "世界", " Paris.", "81", "床前明月光", "world"]
REJECTED = ["3", "6", "11", "再见吧朋友", " Berlin, I think.", "18", "不知道", "there, how are you"]


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(PROMPTS + CHOSEN + REJECTED, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def trainer_for(tokenizer, tmp_path, loss_type, beta, rows, seed, loss_weights=None):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    data = Dataset.from_dict({"prompt": [PROMPTS[i] for i in rows], "chosen": [CHOSEN[i] for i in rows],
                              "rejected": [REJECTED[i] for i in rows]})
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), beta=beta,
                         loss_type=loss_type, loss_weights=loss_weights, report_to="none", use_cpu=True,
                         max_length=64, seed=seed)
    # a fresh adapter with random (not zero) B: the policy differs from the reference from the first step
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False)
    return trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)


CASES = [  # (TRL's loss types, their weights, tunelab's spec, rows of the data, seed)
    (["sigmoid"], None, PreferenceLoss("sigmoid", beta=0.1), [0, 1, 2, 3], 0),
    (["sigmoid"], None, PreferenceLoss("sigmoid", beta=0.5), [4, 5, 6, 7], 1),
    (["ipo"], None, PreferenceLoss("ipo", beta=0.1), [0, 3, 4, 7], 2),
    (["ipo"], None, PreferenceLoss("ipo", beta=1.0), [1, 2, 5, 6], 3),
    (["sigmoid", "sft"], [1.0, 0.5], PreferenceLoss("sigmoid", beta=0.2, sft_weight=0.5), [0, 2, 4, 6], 4),
]


@pytest.mark.parametrize("loss_types, weights, spec, rows, seed", CASES)
def test_loss_metrics_and_gradients_equal_trl(tokenizer, tmp_path, loss_types, weights, spec, rows, seed):
    tr = trainer_for(tokenizer, tmp_path, loss_types, spec.beta, rows, seed, weights)
    model = tr.model
    model.train()
    batch = next(iter(tr.get_train_dataloader()))
    adapter = [p for p in model.parameters() if p.requires_grad]

    trl_loss = tr.compute_loss(model, batch)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in adapter]
    model.zero_grad(set_to_none=True)
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    policy, per_token = answer_logps(model, ids, attention, completion)
    reference = reference_logps(model, ids, attention, completion)
    loss, metrics = preference_loss(spec, policy, completion, reference, per_token)
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    assert abs(metrics["rewards/margins"]) > 1e-4  # the adapter really moved the policy away from the reference
    for key, value in metrics.items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key
    for ours, theirs in zip([p.grad for p in adapter], trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_simpo_equals_trl_cpo(tokenizer):
    from trl.experimental.cpo import CPOTrainer
    torch.manual_seed(5)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    pairs = []
    for i in range(len(PROMPTS)):
        prompt = tokenizer(PROMPTS[i], add_special_tokens=False)["input_ids"]
        for answer in (CHOSEN[i], REJECTED[i]):
            pairs.append((prompt, tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]))
    order = pairs[0::2] + pairs[1::2]  # chosen rows, then rejected rows
    width = max(len(p) + len(a) for p, a in order)
    ids = torch.full((len(order), width), tokenizer.pad_token_id)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (p, a) in enumerate(order):
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        attention[r, :len(p) + len(a)] = 1
        completion[r, len(p):len(p) + len(a)] = 1
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
    for beta, gamma in ((2.0, 0.5), (10.0, 1.4)):
        spec = PreferenceLoss("simpo", beta=beta, simpo_gamma=gamma)
        policy, _ = answer_logps(model, ids, attention, completion)
        loss, metrics = preference_loss(spec, policy, completion)
        logits = model(input_ids=ids, attention_mask=attention).logits
        averaged = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
        # the trainer's own loss method, on a stand-in for the trainer with the settings it reads
        cpo = types.SimpleNamespace(beta=beta, simpo_gamma=gamma, label_smoothing=0.0, alpha=0.0,
                                    loss_type="simpo", accelerator=types.SimpleNamespace(device="cpu"))
        losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(cpo, *averaged.chunk(2))
        assert loss.item() == pytest.approx(losses.mean().item(), rel=1e-5)
        assert metrics["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), rel=1e-5)
        # a difference of two close fp32 averages, each times beta: absolute agreement to beta x 1e-6 (fp32 spaces
        # an average log-prob of ~-5 by 5e-7, so at beta 10 the margin moves in steps of ~5e-6 whatever the order
        # of the sums; on one host it came 1.4e-6 off at beta 10)
        assert metrics["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(),
                                                           abs=beta * 1e-6)
        assert metrics["logps/chosen"] == pytest.approx(averaged.chunk(2)[0].mean().item(), rel=1e-5)


def test_pairs_tokenise_as_sft_does_and_collate_as_trl_does(tokenizer, tmp_path):
    """A pair is templated and tokenised by fine-tuning's own `encode_examples` (prompt and answer apart, EOS
    after the answer). Where TRL's prompt / prompt+completion tokenisation has the same boundary (an answer that
    starts a new word), the collated batch is TRL's, tensor for tensor, and so is the loss on it."""
    from tunelab.data.packing import encode_examples
    from tunelab.data.preferences import PreferencePair, pair_examples
    from tunelab.data.templates import PromptTemplate
    from tunelab.train.methods.dpo_loss import collate_pairs
    prompts, chosen, rejected = ["Say hi:", "1+1=", "Capital of France?"], [" hi", " 2", " Paris"], \
        [" no", " 11", " Rome, I think"]
    pairs = [PreferencePair(p, c, r) for p, c, r in zip(prompts, chosen, rejected)]
    examples = pair_examples(pairs)
    template = PromptTemplate("none")
    encoded = list(zip(encode_examples(tokenizer, template, [c for c, _ in examples], 64),
                       encode_examples(tokenizer, template, [r for _, r in examples], 64)))
    ours = collate_pairs(encoded, tokenizer.pad_token_id)

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    data = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=3, report_to="none",
                         use_cpu=True, max_length=64)
    tr = trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    theirs = next(iter(tr.get_eval_dataloader(tr.train_dataset)))  # in order (the train loader shuffles)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert ours[key].tolist() == theirs[key].tolist(), (key, ours[key].tolist(), theirs[key].tolist())
    tr.model.train()
    policy, per_token = answer_logps(tr.model, ours["input_ids"], ours["attention_mask"], ours["completion_mask"])
    reference = reference_logps(tr.model, ours["input_ids"], ours["attention_mask"], ours["completion_mask"])
    loss, _ = preference_loss(PreferenceLoss("sigmoid", beta=0.1), policy, ours["completion_mask"], reference)
    assert loss.item() == pytest.approx(tr.compute_loss(tr.model, theirs).item(), rel=1e-5)
    # a prompt given as chat messages is its last user message, as tunelab's saved chat template renders it
    chat = PreferencePair([{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                           {"role": "assistant", "content": "ok"}, {"role": "user", "content": "1+1="}], " 2", " 3")
    assert pair_examples([chat])[0][0].instruction == "1+1="
