"""The one log-probability kernel (`model.kernels.logprobs`) against autograd over a plain fp32 log-softmax.

Every method scores tokens through it (SFT, DPO, GRPO, distillation, evaluation, serving), so its values and
gradients are checked here on many shapes, temperatures and chunk boundaries, and `scored_logps` against a
model's own logits on a tiny Llama (plain head: backbone + chunks) and on GPT-2 (its own forward).
"""

from __future__ import annotations

import pytest
import torch

from tunelab.model.kernels.logprobs import (ProjectedCrossEntropy, chunk_rows, entropies_of, log_softmax_chunks,
                                            scored_logps, target_logps)


def reference(hidden, weight, targets, temperature=1.0):
    logp = torch.log_softmax((hidden @ weight.t()).float() / temperature, dim=-1)
    return logp.gather(1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("n,vocab,temperature", [(1, 7, 1.0), (63, 100, 0.7), (300, 40_000, 1.0),
                                                 (129, 33_000, 1.3), (0, 50, 1.0)])
def test_target_logps_match_autograd(n, vocab, temperature):
    g = torch.Generator().manual_seed(n + vocab)
    # float64 matmuls, so that the summation order over a 33k vocabulary (a chunk's matmul against one over every
    # position) does not hide a real difference; the log-softmax is fp32 on both sides
    hidden = torch.randn(n, 16, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(vocab, 16, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    upstream = torch.randn(n, generator=g)
    if n > chunk_rows(vocab):
        assert len(list(log_softmax_chunks(hidden.detach(), weight.detach()))) > 1  # the chunk seams are crossed
    got, spread = target_logps(hidden, weight, targets, temperature, entropies=True)
    (got * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    want, want_spread = reference(hidden, weight, targets, temperature)
    (want * upstream).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(spread, want_spread.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-5, atol=1e-6)
    assert spread is not None and not spread.requires_grad


def test_a_head_module_runs_as_it_is():
    """A head with a bias (or hooks) is not projected by hand: its own forward, the same numbers."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 30)
    hidden, targets = torch.randn(5, 8, generator=g), torch.randint(0, 30, (5,), generator=g)
    got, _ = target_logps(hidden, head, targets)
    want = torch.log_softmax(head(hidden), -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(got, want)


def test_cross_entropy_is_the_negated_sum_over_a_count():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(200, 12, generator=g, requires_grad=True)
    weight = torch.randn(20_000, 12, generator=g, requires_grad=True)
    targets = torch.randint(0, 20_000, (200,), generator=g)
    loss = ProjectedCrossEntropy.apply(hidden, weight, targets, 37)
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    other = -target_logps(hidden, weight, targets)[0].sum() / 37
    other.backward()
    torch.testing.assert_close(loss, other, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-5, atol=1e-7)


def test_under_bf16_autocast_the_matmuls_run_in_bf16_as_autograds_do():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(70, 16, generator=g, requires_grad=True)
    weight = torch.randn(3000, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 3000, (70,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = target_logps(hidden, weight, targets)
    got.sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = hidden @ weight.t()  # bf16 under autocast
    want = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0]
    want.sum().backward()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grads[1], weight.grad, rtol=2e-2, atol=2e-2)


def test_entropies_of_a_uniform_and_a_certain_distribution():
    logp = torch.log_softmax(torch.tensor([[0.0] * 8, [0.0] + [-1e4] * 7]), -1)
    torch.testing.assert_close(entropies_of(logp), torch.tensor([torch.log(torch.tensor(8.0)).item(), 0.0]))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama-backbone", "gpt2-own-forward"])
def test_scored_logps_equal_the_models_own_logits(build):
    model = build()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[2, 8:] = 0  # a padded row
    scored = torch.rand(3, 10, generator=g) > 0.4
    scored[2, 7:] = False
    got, spread = scored_logps(model, ids, scored, temperature=0.9, entropies=True, attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / 0.9
    logp = torch.log_softmax(logits, -1)
    want = logp.gather(-1, ids[:, 1:, None])[..., 0] * scored
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spread, -(logp.exp() * logp).sum(-1) * scored, rtol=1e-5, atol=1e-5)
    assert got.shape == (3, 10) and (got[~scored] == 0).all()
