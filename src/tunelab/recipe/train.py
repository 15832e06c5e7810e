"""The recipe's `train:` section: the method (sft, dpo, grpo, rft) and its settings, the optimizer and schedule,
device, precision and sharding, checkpoints, validation and the divergence guard."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from tunelab.recipe.fields import DEVICE_PATTERN, StrictSection, Text


# the values of the loss settings: the one list of each, which the recipe validates and the losses
# (train/methods/dpo_loss.py, grpo_loss.py) check a value given from Python against
PreferenceLossType = Literal["sigmoid", "ipo", "simpo"]
PREFERENCE_LOSSES: tuple[str, ...] = get_args(PreferenceLossType)
GRPOLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
GRPO_LOSSES: tuple[str, ...] = get_args(GRPOLossType)
ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = get_args(ScaleRewards)
SamplerCorrection = Literal["sequence_mask", "sequence_truncate", "token_mask", "token_truncate", "none"]
SAMPLER_CORRECTIONS: tuple[str, ...] = get_args(SamplerCorrection)


class DivergenceConfig(StrictSection):
    """When a run that has stopped learning or runs away is stopped (`tunelab.train.divergence`)."""

    enabled: bool = True
    flat_steps: int = Field(default=10, ge=2, description="steps of a zero gradient and an unmoving loss")
    spike_factor: float = Field(default=3.0, gt=1, description="a spike: this many times the running loss …")
    spike_rise: float = Field(default=1.0, ge=0, description="… and this many nats above it")
    spike_steps: int = Field(default=10, ge=1, description="steps a spike must last")


class SampledAnswers(StrictSection):
    """What the methods that learn from the model's own sampled answers share (`grpo`, `rft`): how long an answer
    may be, the sampling's nucleus and top-k, and the reward that scores the answers."""

    max_completion_length: int = Field(default=64, ge=1, description="tokens an answer may have")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0: off")
    rewards: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"task": "arithmetic"}], min_length=1,
        description="reward terms: {task: NAME} (1 when the task's grader accepts the answer), {format: REGEX}, "
                    "{length: {max_tokens, cache}}, {function: file.py:name}; each with an optional weight")


class GRPOConfig(SampledAnswers):
    """`train.method: grpo` (`tunelab.train.methods.grpo`): completions sampled with tunelab's own decoding core,
    scored by `rewards`, trained on their group-normalised advantages (`tunelab.train.methods.grpo_loss`). Names
    follow TRL's GRPOConfig; `train.batch_size` counts prompts, each sampled `num_generations` times. Four defaults
    are not TRL's but what worked on a small LoRA model (SmolLM2-135M, the sweep in docs/grpo.md): temperature 0.7,
    DAPO's clip-higher (epsilon_high 0.28), cut answers not trained on, and groups that all scored alike skipped."""

    num_generations: int = Field(default=8, ge=2, description="completions sampled per prompt (a group)")
    temperature: float = Field(default=0.7, gt=0, description="sampling temperature (also divides the logits "
                                                               "the log-probabilities come from, as TRL)")
    beta: float = Field(default=0.0, ge=0, description="weight of the KL term to the reference (the model with "
                                                        "its LoRA adapter off); 0: no reference computed")
    epsilon: float = Field(default=0.2, ge=0, description="the clip range's lower side (TRL's epsilon)")
    epsilon_high: float | None = Field(default=0.28, ge=0, description="its upper side (DAPO's clip-higher); "
                                                                        "null: epsilon (TRL)")
    loss_type: GRPOLossType = Field(
        default="dapo", description="how token losses are averaged (tunelab.train.methods.grpo_loss)")
    scale_rewards: ScaleRewards = Field(
        default="group", description="divide advantages by the group's std, the batch's, or not (Dr. GRPO)")
    mask_truncated_completions: bool = Field(
        default=True, description="train on no token of a completion cut at max_completion_length (DAPO)")
    num_iterations: int = Field(
        default=1, ge=1, description="optimizer steps on each generation batch (TRL's num_iterations; the old "
                                     "policy's log-probabilities are kept from sampling time): train.max_steps "
                                     "and epochs count optimizer steps, a generation every num_iterations")
    zero_variance: Literal["keep", "skip", "resample", "refill"] = Field(
        default="skip", description="groups whose completions all scored the same teach nothing: keep them in the "
                                    "batch (TRL), skip their forward and backward, sample them again, or refill "
                                    "them: another training prompt's group in their place (DAPO's dynamic "
                                    "sampling); resample and refill try up to resample_rounds times, then skip")
    resample_rounds: int = Field(default=2, ge=1, le=16, description="zero_variance resample / refill: new draws "
                                                                    "for a group that scored all alike, at most")
    filter_prompts: bool = Field(
        default=False, description="before training, sample a group for every prompt from the starting model and "
                                   "keep the prompts whose answers differ in reward (neither all right nor all "
                                   "wrong): every step goes to prompts that teach; the kept share is logged")
    sampler_correction: SamplerCorrection = Field(
        default="sequence_mask", description="with engine.kind vllm: how the loss corrects for the sampler's "
                                             "probabilities not being the trainer's (TRL's "
                                             "vllm_importance_sampling_mode: the ratio trainer / sampler, per "
                                             "token or per answer, clipped (truncate) or its tokens masked out "
                                             "beyond the bounds (mask)); none: no correction")
    sampler_clip_max: float | None = Field(default=3.0, gt=0, description="the ratio's upper bound (TRL's "
                                                                          "vllm_importance_sampling_clip_max)")
    sampler_clip_min: float | None = Field(default=None, ge=0, description="its lower bound; null: none")


class RFTConfig(SampledAnswers):
    """`train.method: rft` (`tunelab.train.methods.rft`): rejection-sampling fine-tuning (expert iteration, STaR,
    RAFT): each prompt of a step sampled `num_generations` times with tunelab's decoding core, the answers whose
    reward reaches `accept` kept (distinct, ended, at most `keep` a prompt; with `max_answers`, the hardest
    prompts' first), and the step is fine-tuning on them. A round is an epoch over the prompts (`train.epochs`)."""

    num_generations: int = Field(default=8, ge=1, description="answers sampled per prompt")
    temperature: float = Field(default=0.7, gt=0, description="sampling temperature (the loss is at 1: plain "
                                                              "cross-entropy on the kept answers)")
    accept: float = Field(default=1.0, description="an answer is kept when its weighted reward is at least this "
                                                   "(1: the grader says right, with the default reward)")
    keep: int = Field(default=2, ge=1, description="distinct accepted answers trained on per prompt, at most")
    max_answers: int | None = Field(
        default=None, ge=1, description="answers a micro-batch trains on, at most: taken from the prompts with the "
                                        "fewest accepted answers first (the hardest the model still solves), one "
                                        "each in turn; default: no limit")


class PreferenceConfig(StrictSection):
    """The preference loss of `train.method: dpo` (`tunelab.train.methods.dpo_loss`)."""

    loss: PreferenceLossType = Field(
        default="sigmoid", description="sigmoid: DPO; ipo: IPO; simpo: SimPO (reference-free, length-normalised)")
    beta: float = Field(default=0.1, gt=0, description="DPO/IPO's β (τ for IPO); SimPO's reward scale")
    simpo_gamma: float = Field(default=0.5, ge=0, description="SimPO's target reward margin γ")
    sft_weight: float = Field(default=0.0, ge=0, description="weight of the chosen answers' NLL added to the loss")


class DistillConfig(StrictSection):
    """`train.distill` (`tunelab.train.methods.distill_loss`): beside the answers' cross-entropy, each distilled
    answer token learns the teacher's whole next-token distribution, weight · T² · KL at temperature T. The
    teacher is the base (the model with its LoRA adapter off: what it said before training, kept), or a model
    that shares the tokenizer (`teacher: PATH`: logit knowledge distillation)."""

    weight: float = Field(default=1.0, gt=0, description="the KL term's weight beside the cross-entropy")
    temperature: float = Field(default=1.0, gt=0, description="both distributions are softmax(logits / T); the "
                                                               "term is multiplied by T² (Hinton et al. 2015)")
    # not `on`: YAML 1.1 reads the key `on` as the boolean true
    tokens: Literal["replay", "all"] = Field(
        default="replay", description="the tokens distilled: replay, the answer tokens of examples that replay the "
                                      "base's own answers (Example.meta['replay']); all, every trained token")
    teacher: Text | None = Field(default=None, description="a model directory (or hub id, or LoRA adapter) "
                                                           "sharing the tokenizer; default: the base, under LoRA")
    kind: Literal["forward_kl", "reverse_kl"] = Field(
        default="forward_kl", description="forward_kl: KL(teacher ‖ model) (Hinton's); reverse_kl: "
                                          "KL(model ‖ teacher), mode-seeking (MiniLLM's)")


class TrainConfig(StrictSection):
    method: Literal["sft", "dpo", "grpo", "rft"] = Field(
        default="sft", description="sft: learn the answers; dpo: learn from preference pairs {prompt, chosen, "
                                   "rejected} (`tunelab data prefs`) with train.preference's loss; grpo: learn "
                                   "from sampled answers scored by train.grpo's rewards; rft: fine-tune on the "
                                   "sampled answers train.rft's rewards accept")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rft: RFTConfig = Field(default_factory=RFTConfig)
    distill: DistillConfig | None = Field(default=None, description="sft: a KL term to the base's (or a "
                                                                     "teacher's) next-token distribution")
    epochs: float = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(default=4, ge=1, description="rows per micro-batch (packed rows if packing)")
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    device: Text = Field(default="auto", pattern=DEVICE_PATTERN,
                         description="auto: this process's GPU, else an Ascend NPU, else MPS, else the CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the GPU does it natively, else fp16 with a gradient "
                                    "scaler; on a CPU (auto or bf16) bf16 only where its matmuls at the model's "
                                    "width measure clearly faster than fp32, else fp32 (model/device.py)")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="several processes: ddp replicates the model on each; fsdp (FSDP2) shards "
                                   "weights, gradients and optimizer states across them (train/sharding.py)")
    cpu_offload: bool = Field(default=False, description="fsdp: keep parameters, gradients and optimizer states "
                                                         "on the host between uses")
    memory_check: bool = Field(default=True, description="on a GPU, refuse a run that `tunelab plan` says "
                                                          "cannot fit the device, before loading the model")
    gradient_checkpointing: bool = Field(default=False, description="recompute each layer's activations in the "
                                         "backward pass: far less memory, ~30 % more compute")
    num_checkpoints: int = Field(default=5, ge=1)
    save_merged: bool = False
    log_every: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1, le=4096, description="torch CPU threads")
    eval_every: int | None = Field(default=None, ge=1, description="validation loss every N steps (corpus "
                                                                   "runs; also at every checkpoint)")
    val_blocks: int | None = Field(default=None, ge=1, description="validate on the first N val blocks only")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="stop after this many validations without improvement")
    early_stopping_min_delta: float = Field(default=0.0, ge=0, description="the val-loss drop that counts")
    peak_tflops: float | None = Field(default=None, gt=0, description="the device's peak for MFU (default: "
                                                                       "measured with a matmul at start)")
    divergence: DivergenceConfig = Field(default_factory=DivergenceConfig)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        default="adamw", description="adamw_8bit: bitsandbytes' AdamW with 8-bit moments (a quarter of the optimizer "
                                     "memory); paged_: and paged out of GPU memory under pressure "
                                     "(`pip install 'tunelab[quant]'`)")

    @property
    def sampling(self) -> SampledAnswers | None:
        """The settings of a method that samples answers to prompts (grpo, rft); None for sft and dpo."""
        return {"grpo": self.grpo, "rft": self.rft}.get(self.method)

    @model_validator(mode="after")
    def _distill_is_sft(self):
        """Distillation adds a term to the answers' cross-entropy: sft's loss; dpo and grpo have their own KL, and
        rft's answers are the model's own."""
        if self.distill is not None and self.method != "sft":
            raise ValueError(f"train.distill adds a KL term to train.method sft's loss, not {self.method}'s "
                             "(dpo and grpo already keep to their reference; rft trains on the model's own answers)")
        return self
