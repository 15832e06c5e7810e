"""tunelab's GRPO math against TRL itself (`trl` 1.16, a test dependency): on a tiny random Llama with a LoRA
adapter (random, nonzero B: the policy is not the reference), TRL's `GRPOTrainer` scores the SAME completions
— its documented `rollout_func` hook returns fixed completion ids instead of sampling — under the same
rewards (two reward functions with weights), and `_generate_and_score_completions` / `_compute_loss` give its
advantages, old and reference log-probabilities, loss and logged metrics; `tunelab.train.methods.grpo_loss` computes them from
the same prompts, completions and rewards. Everything agrees, and so do the adapter's gradients, for each loss
type, β = 0 and β > 0, one pass and several (`num_iterations` > 1: the old log-probabilities TRL keeps, the adapter
moved between generation and loss so that ratios leave 1 and clipping happens), and each `scale_rewards`."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")  # TRL's hook for fixed rollouts

from datasets import Dataset  # noqa: E402  (trl's own dependency)
from peft import LoraConfig  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl.trainer.utils import split_tensor_dict  # noqa: E402

from tunelab.train.methods.grpo import old_policy_logps, reference_logps  # noqa: E402
from tunelab.train.methods.grpo_loss import (GRPOLoss, collate_completions, completion_token_logps, completion_metrics,  # noqa: E402
                                group_advantages, grpo_loss, sampler_ratio, zero_variance_groups)

PROMPTS = ["计算 12+7=", "What is 9*9? Answer:", "用一句话介绍北京。Beijing is"]
G = 4  # completions per prompt
COMPLETIONS = [  # per prompt, G texts; the EOS decides whether one ended or was cut at the length limit
    ["19<eos>", "十九<eos>", "18 or 19", "答案是 19。<eos>"],
    [" 81<eos>", " 81<eos>", " eighty-one, I think it is 81", " 18<eos>"],
    [" the capital of China.<eos>", " 中国的首都。<eos>", " a city", " 北京是中国的首都<eos>"],
]
CORRECT = [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]  # prompt 2: zero variance
FORMAT = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
WEIGHTS = [1.0, 0.5]
MAX_COMPLETION = 16


def build_tokenizer():
    texts = PROMPTS + [c.replace("<eos>", "") for group in COMPLETIONS for c in group]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def completion_ids(tokenizer) -> list[list[int]]:
    """Every completion's token ids, prompt-major, EOS where the text ends with one."""
    out = []
    for group in COMPLETIONS:
        for text in group:
            ended = text.endswith("<eos>")
            ids = tokenizer(text.removesuffix("<eos>"), add_special_tokens=False)["input_ids"]
            out.append(ids + ([tokenizer.eos_token_id] if ended else []))
    return out


def trainer_for(tokenizer, tmp_path, seed, terms=None, weights=WEIGHTS, sampler_logps=None, **config):
    """TRL's trainer on a fresh tiny Llama + LoRA, whose rollouts are our fixed completions and whose reward
    functions give `terms` (name → per prompt, G values; None: "does not apply"), default correct and format_ok.
    `sampler_logps` (a list a completion): the rollout's log-probabilities, as vLLM's would be (a callable: made
    from the trainer when the rollout runs)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    fixed = completion_ids(tokenizer)
    terms = terms or {"correct": CORRECT, "format_ok": FORMAT}

    def rollout(prompts, trainer):  # TRL's own prompt tokenisation; our completions instead of sampled ones
        assert len(prompts) == len(fixed)
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        logprobs = sampler_logps(trainer) if callable(sampler_logps) else sampler_logps
        return {"prompt_ids": prompt_ids, "completion_ids": [list(c) for c in fixed], "logprobs": logprobs}

    def reward_function(name, table):
        def reward(prompts, completions, completion_ids, **kwargs):  # rows in our order: prompt-major
            assert prompts == [p for p in PROMPTS for _ in range(G)] and completion_ids == fixed
            return [value for row in table for value in row]
        reward.__name__ = name  # TRL logs rewards/{__name__}/mean
        return reward

    config.setdefault("per_device_train_batch_size", len(fixed))
    # bf16=False: GRPOConfig's default bf16 autocast would run TRL's forward in bf16 on the CPU as well
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), num_generations=G, max_completion_length=MAX_COMPLETION,
                          report_to="none", use_cpu=True, seed=seed, reward_weights=weights, bf16=False, **config)
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False)
    tr = trl.GRPOTrainer(model=model, reward_funcs=[reward_function(n, t) for n, t in terms.items()], args=args,
                         train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tokenizer,
                         peft_config=peft, rollout_func=rollout)
    tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
    return tr


CASES = [  # (TRL's settings, seed)
    (dict(loss_type="grpo", beta=0.0, scale_rewards="group"), 0),
    (dict(loss_type="grpo", beta=0.05, scale_rewards="batch"), 1),
    (dict(loss_type="dapo", beta=0.0, scale_rewards="none", epsilon=0.1, epsilon_high=0.28, num_iterations=2), 2),
    (dict(loss_type="dapo", beta=0.1, scale_rewards=True), 3),
    (dict(loss_type="dr_grpo", beta=0.04, scale_rewards=False, num_iterations=3), 4),
    (dict(loss_type="bnpo", beta=0.02, scale_rewards="group", num_iterations=2, epsilon=0.05), 5),
    (dict(loss_type="grpo", beta=0.1, scale_rewards="group", num_iterations=2, temperature=0.7), 6),
    (dict(loss_type="grpo", beta=0.05, scale_rewards="group", num_iterations=2, epsilon=0.05,
          importance_sampling_level="sequence", multi_objective_aggregation="normalize_then_sum"), 7),
    (dict(loss_type="dapo", beta=0.05, scale_rewards="batch", num_iterations=2, delta=1.3,
          use_bias_correction_kl=False, mask_truncated_completions=True), 8),
]
RENAMED = {"epsilon": "epsilon_low", "use_bias_correction_kl": "kl_bias_correction"}
NOT_THE_LOSS = ("scale_rewards", "num_iterations", "multi_objective_aggregation", "mask_truncated_completions")


def spec_for(config: dict) -> GRPOLoss:
    """tunelab's loss settings for TRL's GRPOConfig fields."""
    return GRPOLoss(max_completion_length=MAX_COMPLETION,
                    **{RENAMED.get(k, k): v for k, v in config.items() if k not in NOT_THE_LOSS})


@pytest.mark.parametrize("config, seed", CASES)
def test_advantages_logps_loss_metrics_and_gradients_equal_trl(tokenizer, tmp_path, config, seed):
    tr = trainer_for(tokenizer, tmp_path, seed, **config)
    model = tr.model
    model.train()
    fixed = completion_ids(tokenizer)
    rows = [{"prompt": p} for p in PROMPTS for _ in range(G)]  # RepeatSampler's order: prompt-major
    out = tr._generate_and_score_completions(rows)
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    # the batch: prompts padded on the left, completions on the right, as TRL pads them
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(G)]
    batch = collate_completions(prompt_ids, fixed, tokenizer.pad_token_id, [tokenizer.eos_token_id],
                                mask_truncated=config.get("mask_truncated_completions", False))
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        assert batch[key].tolist() == out[key].tolist(), key
    lengths = completion_metrics(fixed, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    for key, value in lengths.items():
        assert value == pytest.approx(trl_metrics[key]), key
    assert lengths["completions/clipped_ratio"] == pytest.approx(3 / 12)

    # the advantages and the reward metrics
    rewards = torch.tensor([CORRECT, FORMAT]).permute(1, 2, 0)  # (prompts, G, terms)
    advantages, reward_metrics = group_advantages(
        rewards, config["scale_rewards"], WEIGHTS, config.get("multi_objective_aggregation", "sum_then_normalize"),
        names=["correct", "format_ok"])
    torch.testing.assert_close(advantages.reshape(-1), out["advantages"], rtol=1e-5, atol=1e-6)
    for key, value in reward_metrics.items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key
    assert zero_variance_groups(rewards, WEIGHTS).tolist() == [False, False, True]

    spec = spec_for(config)
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    old = None
    if config.get("num_iterations", 1) > 1:  # TRL keeps the old policy's log-probabilities
        old = old_policy_logps(model, None, batch, spec.temperature)  # what the rollout keeps (padded rows: no parts)
        torch.testing.assert_close(old, out["old_per_token_logps"], rtol=1e-5, atol=1e-6)
        # an optimizer step between generation and this pass: the policy moves away from the old one
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in (p for p in model.parameters() if p.requires_grad):
                p.add_(torch.randn_like(p) * 0.5)
    else:
        assert "old_per_token_logps" not in out
    ref = None
    if spec.needs_reference:
        ref = reference_logps(model, None, batch, spec.temperature)  # what the rollout takes for the KL term
        torch.testing.assert_close(ref, out["ref_per_token_logps"], rtol=1e-5, atol=1e-6)
    else:
        assert "ref_per_token_logps" not in out

    # TRL: its per-token log-probabilities and entropies, then its loss, metrics and gradients
    adapter = [p for p in model.parameters() if p.requires_grad]
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        trl_logps, trl_entropies, _ = tr._get_per_token_logps_and_entropies(
            model, input_ids, attention, out["completion_ids"].shape[1], compute_entropy=True)
    trl_loss = tr._compute_loss(model, out)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in adapter]
    model.zero_grad(set_to_none=True)
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    logps, entropies = completion_token_logps(model, *args, temperature=spec.temperature, entropy=True)
    torch.testing.assert_close(logps.detach(), trl_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropies.detach(), trl_entropies, rtol=1e-5, atol=1e-5)
    loss, metrics = grpo_loss(spec, logps, batch["completion_mask"], advantages.reshape(-1), old, ref,
                              entropies=entropies)
    loss.backward()

    # the loss is a near-cancelling sum of token terms of ~1e-2 (float32: ~1e-9 each); the number of threads
    # reorders those sums in both implementations (with 1 thread config 6 is 1.4e-7 off), so the absolute bound is
    # 1e-6: 500x under the loss of that config, whose scale a wrong normalisation would change
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    # on a fresh batch the surrogate's value is −mean(A) ≈ 0: the gradient is what carries the signal
    assert sum(p.grad.norm() for p in adapter) > 1e-3
    for key, value in metrics.items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    assert set(metrics) >= {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy"}
    if spec.beta:
        assert metrics["kl"] > 1e-6  # the adapter really moved the policy away from the reference
    if old is not None:
        assert metrics["clip_ratio/region_mean"] > 0  # clipping happened: the ratios left [1 - ε, 1 + ε]
    for ours, theirs in zip([p.grad for p in adapter], trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_gradient_accumulation_scales_as_trl(tokenizer, tmp_path, loss_type):
    """Two micro-batches of one generation batch (TRL: gradient_accumulation_steps 2, the batch split in two):
    `dapo` divides by the step's completion tokens (`num_items_in_batch`) and TRL does not divide it again;
    `grpo` and `dr_grpo` are per micro-batch averages that TRL divides by the accumulation steps."""
    tr = trainer_for(tokenizer, tmp_path, 9, loss_type=loss_type, beta=0.0, scale_rewards="group",
                     gradient_accumulation_steps=2, per_device_train_batch_size=len(PROMPTS) * G // 2)
    tr.current_gradient_accumulation_steps = 2
    model = tr.model
    model.train()
    out = tr._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(G)])
    step_tokens = int(out["completion_mask"].sum())
    assert int(out["num_items_in_batch"]) == step_tokens
    spec = GRPOLoss(loss_type=loss_type, max_completion_length=MAX_COMPLETION)
    for half in split_tensor_dict(out, 2):
        theirs = tr._compute_loss(model, half)
        logps, _ = completion_token_logps(model, half["prompt_ids"], half["prompt_mask"], half["completion_ids"],
                                    half["completion_mask"])
        ours, _ = grpo_loss(spec, logps, half["completion_mask"], half["advantages"], num_items_in_batch=step_tokens)
        expected = ours if loss_type == "dapo" else ours / 2
        assert expected.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
        assert abs(theirs.item()) > 1e-3  # half a group's advantages do not cancel: a real value
        assert int(half["completion_mask"].sum()) < step_tokens  # dapo's own-batch count would differ


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_rewards_that_do_not_apply_as_trl(tokenizer, tmp_path, aggregation, scale_rewards):
    """TRL's None ("this reward does not apply to this completion") is NaN here: left out of the sums, means and
    stds, and a completion no reward applies to gets advantage 0. Three terms with their weights."""
    no = None
    terms = {"correct": [[1.0, no, 0.0, 1.0], [no, no, no, 0.0], [1.0, 1.0, 1.0, 1.0]],
             "format_ok": [[no, 0.0, 0.5, 1.0], [no, 1.0, no, 1.0], [0.0, no, 1.0, 1.0]],
             "brevity": [[0.2, no, 0.1, 0.3], [no, no, no, 0.9], [no, no, no, no]]}
    tr = trainer_for(tokenizer, tmp_path, 10, terms, [1.0, 0.5, 2.0], loss_type="dapo", scale_rewards=scale_rewards,
                     multi_objective_aggregation=aggregation)
    tr.model.train()
    out = tr._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(G)])
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}
    rewards = torch.tensor([[[nan_for_none(v) for v in row] for row in t] for t in terms.values()]).permute(1, 2, 0)
    advantages, metrics = group_advantages(rewards, scale_rewards, [1.0, 0.5, 2.0], aggregation, names=list(terms))
    torch.testing.assert_close(advantages.reshape(-1), out["advantages"], rtol=1e-5, atol=1e-6)
    assert advantages[1, 0].item() == 0.0  # nothing applies to it
    for key, value in metrics.items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def nan_for_none(value):
    return float("nan") if value is None else value


def test_groups_without_signal_and_unscorable_completions():
    """A group whose rewards are all equal, or that has fewer than two scorable completions, teaches nothing:
    `zero_variance_groups` flags it, and its advantages are 0; a completion no term applies to (NaN) gets 0
    and is left out of its group's mean and std."""
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, nan, nan, nan], [2.0, nan, 0.0, 1.0]])
    assert zero_variance_groups(rewards).tolist() == [False, True, True, False]
    advantages, metrics = group_advantages(rewards, "group")
    assert advantages[1].tolist() == [0.0] * 4 and advantages[2].tolist() == [0.0] * 4
    assert advantages[3, 1].item() == 0.0
    assert advantages[3, [0, 2, 3]].tolist() == pytest.approx([1 / (1 + 1e-4), -1 / (1 + 1e-4), 0.0])
    assert metrics["frac_reward_zero_std"] == pytest.approx(4 / 16)  # TRL's: group 1's rows (group 2's std is NaN)
    none, _ = group_advantages(rewards, False)
    assert none[0].tolist() == [0.5, -0.5, 0.5, -0.5]
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, "per-token")
    with pytest.raises(ValueError, match="weights"):
        group_advantages(rewards.unsqueeze(-1), "group", weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="loss type"):
        GRPOLoss(loss_type="ppo")
    assert GRPOLoss(epsilon_low=0.1).epsilon_high == 0.1


def test_collate_masks_truncated_completions_and_counts_lengths():
    batch = collate_completions([[5, 6, 7], [8]], [[9, 2], [10, 11, 12]], pad_id=1, stop_ids=[2], mask_truncated=True)
    assert batch["prompt_ids"].tolist() == [[5, 6, 7], [1, 1, 8]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["completion_ids"].tolist() == [[9, 2, 1], [10, 11, 12]]
    assert batch["completion_mask"].tolist() == [[1, 1, 0], [0, 0, 0]]  # the second was cut: not trained on
    metrics = completion_metrics([[9, 2], [10, 11, 12]], [2], pad_id=1)
    assert metrics["completions/clipped_ratio"] == 0.5 and metrics["completions/mean_terminated_length"] == 2


SAMPLER_CASES = [  # (TRL's vllm_importance_sampling_mode, clip_min, clip_max, the sampler's noise, seed)
    ("sequence_mask", None, 3.0, 0.3, 0),
    ("sequence_truncate", None, 3.0, 0.3, 1),
    ("token_mask", 0.5, 2.0, 0.5, 2),
    ("token_truncate", 0.8, 1.5, 0.5, 3),
    ("sequence_mask", 0.2, 5.0, 0.6, 4),
    ("token_truncate", None, 3.0, 1.0, 5),
]


@pytest.mark.parametrize("mode, clip_min, clip_max, noise, seed", SAMPLER_CASES)
def test_the_sampler_correction_equals_trls(tokenizer, tmp_path, mode, clip_min, clip_max, noise, seed):
    """Answers drawn by another engine (vLLM's log-probabilities: the trainer's plus noise, one token unscored):
    the ratio, TRL's `sampling/*` metrics, the loss and its gradients, as TRL's `use_vllm` path computes them."""
    fixed = completion_ids(tokenizer)
    gen = torch.Generator().manual_seed(100 + seed)
    sampled = {}

    def sampler_logps(trainer):  # the trainer's own log-probabilities at sampling time, moved by a sampler's error
        prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(G)]
        batch = collate_completions(prompt_ids, fixed, tokenizer.pad_token_id, [tokenizer.eos_token_id])
        old = old_policy_logps(trainer.model, None, batch)
        rows = [[float(v) + noise * float(torch.randn((), generator=gen)) for v in old[i, :len(c)]]
                for i, c in enumerate(fixed)]
        rows[1][0] = None  # vLLM gives None for a token it could not score: no correction there
        sampled["rows"] = rows
        return rows

    config = dict(loss_type="dapo", beta=0.05, scale_rewards="group", num_iterations=1,
                  vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=clip_min,
                  vllm_importance_sampling_clip_max=clip_max)
    tr = trainer_for(tokenizer, tmp_path, seed, sampler_logps=sampler_logps, **config)
    tr.use_vllm, tr.vllm_mode = True, "server"  # TRL's vLLM path without a vLLM: the rollout is ours
    tr._last_loaded_step = tr.state.global_step  # no weights to sync
    model = tr.model
    model.train()
    out = tr._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(G)])
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(G)]
    batch = collate_completions(prompt_ids, fixed, tokenizer.pad_token_id, [tokenizer.eos_token_id])
    width = batch["completion_mask"].shape[1]
    sampler = torch.tensor([[float("nan") if v is None else v for v in r] + [float("nan")] * (width - len(r))
                            for r in sampled["rows"]])
    old = old_policy_logps(model, None, batch)
    torch.testing.assert_close(old, out["old_per_token_logps"], rtol=1e-5, atol=1e-6)
    weights, metrics = sampler_ratio(old, sampler, batch["completion_mask"], mode, clip_min, clip_max)
    torch.testing.assert_close(weights, out["importance_sampling_ratio"], rtol=1e-5, atol=1e-6)
    for key, value in metrics.items():
        assert value == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key
    if mode.endswith("mask"):   # something was masked, something kept
        assert (weights == 0).any() and (weights > 0).any()
    else:                       # clipped to the bounds, and not all one
        assert float(weights.max()) <= clip_max + 1e-6 and float(weights.min()) >= (clip_min or 0.0) - 1e-6
        assert float(weights.min()) < 1 < float(weights.max())

    adapter = [p for p in model.parameters() if p.requires_grad]
    trl_loss = tr._compute_loss(model, out)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in adapter]
    model.zero_grad(set_to_none=True)
    spec = spec_for({k: v for k, v in config.items() if not k.startswith("vllm_")})
    rewards = torch.tensor([CORRECT, FORMAT]).permute(1, 2, 0)
    advantages, _ = group_advantages(rewards, "group", WEIGHTS)
    ref = reference_logps(model, None, batch, spec.temperature)
    logps, entropies = completion_token_logps(model, batch["prompt_ids"], batch["prompt_mask"],
                                              batch["completion_ids"], batch["completion_mask"], entropy=True)
    loss, _ = grpo_loss(spec, logps, batch["completion_mask"], advantages.reshape(-1), old, ref,
                        entropies=entropies, sampler_weights=weights)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    for ours, theirs in zip([p.grad for p in adapter], trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_a_sampler_that_agrees_weighs_nothing():
    """The trainer's own log-probabilities given back: every weight 1, whatever the mode."""
    old = torch.randn(4, 6)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[2, 3:] = 0
    for mode in ("sequence_mask", "sequence_truncate", "token_mask", "token_truncate"):
        weights, metrics = sampler_ratio(old, old.clone(), mask, mode)
        assert torch.equal(weights, torch.ones_like(weights)), mode
        assert metrics["sampling/sampling_logp_difference/max"] == 0
    with pytest.raises(ValueError, match="not one of"):
        sampler_ratio(old, old, mask, "none")
