"""The recipe schema: a YAML file names a run (data, model, training, evaluation), validated on load.

Unknown keys and wrong types are errors naming the key and the file. `--set a.b=value` overrides any key.
MindFormers-style sections (`runner_config`, `pet_config`) are accepted as aliases.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import TunelabError

MIN_VOCAB = 300       # a trained BPE's smallest vocabulary: the 256 bytes, the special tokens and room for merges
# 4x the largest vocabularies in use (Gemma's 256k); the BPE trainer allocates for the size asked, so 2**31
# aborted the process (a 141 GB allocation) instead of raising
MAX_VOCAB = 1 << 20
# a path, name or key that must say something: an empty `corpus:` read as "." and was refused as an existing output
Text = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    # no number in a recipe is meaningfully infinite or NaN: `lr: .inf` or `epochs: .inf` once passed validation
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class EncyclopediaBuild(_Strict):
    """Generated encyclopedia articles as corpus input (`tunelab data encyclopedia`): articles.jsonl, qa.jsonl."""

    out: Text
    count: int = Field(default=3000, ge=1)
    seed: int = 0
    noise: bool = True


class TokenizerBuild(_Strict):
    """A tokenizer trained on the corpus inputs (`tunelab tokenizer train`)."""

    out: Text
    vocab_size: int = Field(default=4096, ge=MIN_VOCAB, le=MAX_VOCAB)


class CorpusBuild(_Strict):
    """How `tunelab run` / `train` build a missing corpus directory: the steps `tunelab data encyclopedia`,
    `tunelab tokenizer train` and `tunelab data corpus` take, each skipped when its output is already there."""

    inputs: list[Text] = Field(default_factory=list, description="JSONL/JSON/TXT files (.gz too), Parquet/Arrow/CSV "
                                                                 "files, save_to_disk folders, folders, hf:NAME")
    encyclopedia: EncyclopediaBuild | None = None
    tokenizer: Text | TokenizerBuild = Field(description="an HF tokenizer directory, or {out, vocab_size} to train")
    block_size: int = Field(default=256, ge=8)
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    seed: int = 0
    text_field: Text = "text"
    cleaning: dict[str, Any] = Field(default_factory=dict, description="rule settings, e.g. {nfkc: true} (checked "
                                                                      "against tunelab.data.corpus.clean.CleaningConfig)")

    @model_validator(mode="after")
    def _has_input(self):
        if not self.inputs and self.encyclopedia is None:
            raise ValueError("give 'inputs' (files or folders) or 'encyclopedia' (generated articles)")
        return self


HF_OPTIONS = ("config", "split", "revision", "data_files", "streaming")


class SourceConfig(_Strict):
    """One data source: a file (`path`), a built-in generator (`generate`), a Hugging Face dataset (`hf`: a hub
    name, a `save_to_disk` folder, Parquet/Arrow/CSV/JSON files or globs, read through `datasets`), or a prepared
    pretraining corpus (`corpus`: a directory written by `tunelab data corpus`, read as memory-mapped token
    blocks)."""

    path: Text | None = None
    generate: Literal["arithmetic", "reading"] | None = None
    hf: Text | None = Field(default=None, description="a hub name (the local cache offline), a save_to_disk folder, "
                                                      "or Parquet/Arrow/CSV/JSON files (a glob)")
    config: Text | None = Field(default=None, description="hf: the dataset's configuration (subset) name")
    split: Text | None = Field(default=None, description="hf: the split (default train)")
    revision: Text | None = Field(default=None, description="hf: a hub branch, tag or commit")
    data_files: Text | list[Text] | dict[str, Text | list[Text]] | None = Field(
        default=None, description="hf: the data files of a hub dataset or folder (load_dataset's data_files)")
    streaming: bool = Field(default=False, description="hf: read rows as they come (no Arrow cache is built); "
                                                       "with count, the first count rows")
    fields: dict[Text, Text] = Field(default_factory=dict, description=(
        "the format's fields from other columns/keys, {format field: column}, e.g. {instruction: question, "
        "output: answer}"))
    corpus: Text | None = None
    build: CorpusBuild | None = Field(default=None, description="build the corpus directory when it is missing")
    format: Literal["auto", "competition", "alpaca", "conversations", "messages", "reading"] = "auto"
    count: int | None = Field(default=None, ge=1, description="generate this many / subsample to this many")
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict, description="generator options, e.g. kinds")
    replay: float | None = Field(default=None, gt=0, lt=1, description=(
        "a corpus replayed while fine-tuning on examples: this fraction of the training tokens are its blocks "
        "(loss on every token), so the model keeps its language modelling"))

    @model_validator(mode="after")
    def _one_of(self):
        if sum(x is not None for x in (self.path, self.generate, self.hf, self.corpus)) != 1:
            raise ValueError("give exactly one of 'path', 'generate', 'hf' or 'corpus'")
        if self.hf is None:
            given = [k for k in HF_OPTIONS if getattr(self, k) not in (None, False)]
            if given:
                raise ValueError(f"'{given[0]}' is an option of a Hugging Face dataset: it goes with 'hf: NAME'")
        if self.streaming and self.split and "[" in self.split:
            raise ValueError(f"a stream reads whole splits, not '{self.split}': give the split's name, and count: N "
                             "for its first N rows (or streaming: false)")
        if self.fields and self.path is None and self.hf is None:
            raise ValueError("'fields' maps the columns of records: it goes with 'path' or 'hf'")
        if self.build is not None and self.corpus is None:
            raise ValueError("'build' makes a corpus directory: it goes with 'corpus: DIR'")
        if self.replay is not None and self.corpus is None:
            raise ValueError("'replay' mixes a corpus's blocks into fine-tuning: it goes with 'corpus: DIR'")
        return self


class ModelConfig(_Strict):
    path: Text | None = Field(default=None, description="local HF directory, hub id, run directory, or a "
                                                         "MindFormers .ckpt (with mindformers_config and tokenizer)")
    mindformers_config: Text | None = Field(default=None, description="the MindFormers YAML of a .ckpt model.path "
                                                                     "(its model_config gives the shapes)")
    preset: Text | None = Field(default=None, description="llama3-8b, internlm-7b, gemma-2b, tiny, ...")
    from_scratch: bool = False
    overrides: dict[str, Any] = Field(default_factory=dict, description="config overrides for a preset")
    tokenizer: Text | None = None
    tokenizer_vocab_size: int = Field(default=2000, ge=MIN_VOCAB, le=MAX_VOCAB)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    quantization: Literal["none", "nf4", "int8"] = Field(
        default="none", description="hold the frozen base in 4-bit NF4 (QLoRA, with double quantisation) or 8-bit "
                                    "int8 through bitsandbytes (`pip install 'tunelab[quant]'`); needs LoRA")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.path is None) == (self.preset is None):
            raise ValueError("give exactly one of 'path' or 'preset'")
        if self.from_scratch and self.preset is None:
            raise ValueError("'from_scratch' needs a 'preset' (the architecture to build)")
        if self.path is not None and self.path.endswith(".ckpt"):
            missing = [f for f in ("mindformers_config", "tokenizer") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a MindFormers .ckpt path needs {' and '.join(missing)} (the YAML that gives "
                                 "its shapes; the tokenizer directory, which a .ckpt does not hold)")
        elif self.mindformers_config is not None:
            raise ValueError("'mindformers_config' goes with a .ckpt path")
        return self

    @model_validator(mode="after")
    def _quantized_base_is_pretrained(self):
        """Quantisation compresses trained weights as they load: a model built from scratch has none."""
        if self.quantization != "none" and (self.path is None or self.from_scratch):
            raise ValueError(f"model.quantization: {self.quantization} quantises a pretrained model as it loads: "
                             "give model.path (not model.from_scratch / a preset)")
        return self


class MixConfig(_Strict):
    """How the example sources of `data.train` are mixed: as `datasets.interleave_datasets` does (and LLaMA-Factory's
    `mix_strategy: interleave_*` with `interleave_probs`): one example at a time from a source drawn with
    `probabilities` (in turn without them), until one source runs out (`first_exhausted`) or every one has
    (`all_exhausted`: the others start over, i.e. oversampling)."""

    probabilities: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None, description="one per example source of data.train, summing to 1; none: take them in turn")
    seed: int = 0
    stopping_strategy: Literal["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"] = Field(
        default="first_exhausted", description="first_exhausted: stop when a source runs out (undersampling); "
                                               "all_exhausted: when every one has (oversampling)")

    @model_validator(mode="after")
    def _a_distribution(self):
        if self.probabilities is not None and abs(sum(self.probabilities) - 1) > 1e-6:
            raise ValueError(f"probabilities must sum to 1, they sum to {sum(self.probabilities):g}")
        return self


class DataConfig(_Strict):
    train: list[SourceConfig] = Field(min_length=1)
    val: list[SourceConfig] = Field(
        default_factory=list, description="held-out preference pairs (train.method dpo): the loss, reward accuracy "
                                          "and margins on them at every checkpoint and every train.eval_every steps")
    mix: MixConfig | None = Field(default=None, description="interleave the example sources (default: one after "
                                                            "the other, all of each)")
    template: Text = Field(default="auto", description=(
        "prompt template: model (the base's own chat template), alpaca, plain, qa, none, sep; auto: the template a "
        "tunelab-made base was trained with, else the base's chat template when it has one, else alpaca; a corpus "
        "run defaults to 'none'"))
    system: str = Field(default="", description="template model: the system prompt of every conversation that has "
                                                "none (empty: the template's own default)")
    template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="template model: extra chat-template variables, e.g. {date_string: "
                                          "26 Jul 2024} (recorded with the run, so it renders the same tomorrow)")
    instruction_prefix: str = ""
    cot: bool = False
    max_seq_len: int = Field(default=256, ge=8)
    packing: bool = Field(default=True, description="pack samples (corpus: whole blocks) into rows, or one a row")
    share_prefix: bool = Field(
        default=False, description="packed samples: hold the template header every sample starts with once per "
                                   "row (each sample attends to it and to itself; same loss and gradients, more "
                                   "samples a row)")
    loss_on: Literal["assistant", "last_turn", "all", "answer"] = Field(
        default="assistant", description="which tokens train: every assistant turn with its end-of-turn token "
                                         "(assistant; 'answer' is its older name), the last one only (last_turn: "
                                         "templates that rewrite earlier turns), or every token (all)")
    sampling: Literal["epoch", "random"] = Field(
        default="epoch", description="corpus blocks: each once per epoch in a seeded order, or drawn at random "
                                     "with replacement")

    @model_validator(mode="before")
    @classmethod
    def _corpus_template(cls, raw: Any) -> Any:
        """A pretraining corpus is plain text: its model continues text, so its template is `none`."""
        train = raw.get("train") if isinstance(raw, dict) else None
        if isinstance(train, list) and "template" not in raw and any(
                isinstance(s, dict) and s.get("corpus") is not None and s.get("replay") is None for s in train):
            raw = {**raw, "template": "none"}
        return raw

    @model_validator(mode="after")
    def _one_kind_of_source(self):
        corpora = [s for s in self.train if s.corpus is not None and s.replay is None]
        replays = [s for s in self.train if s.replay is not None]
        if corpora and len(corpora) != len(self.train):
            raise ValueError("a corpus source cannot be mixed with example sources (path/generate): pretrain on "
                             "the corpus in one run, fine-tune on the examples in another (or give the corpus "
                             "a 'replay' fraction to mix its blocks into the fine-tuning)")
        if len(corpora) > 1:
            raise ValueError("give one corpus source (prepare several inputs into one corpus with "
                             "`tunelab data corpus IN1 IN2 … --out DIR`)")
        if len(replays) > 1:
            raise ValueError("give one corpus to replay")
        if replays and len(replays) == len(self.train):
            raise ValueError("'replay' mixes a corpus into fine-tuning on examples: add a path or generate "
                             "source (to pretrain on the corpus, drop 'replay')")
        if self.sampling == "random" and not corpora:
            raise ValueError("'sampling: random' draws corpus blocks; it needs a corpus source")
        if self.mix is not None:
            mixed = len(self.train) - len(corpora) - len(replays)
            if mixed < 2:
                raise ValueError("'mix' interleaves example sources: give at least two in data.train")
            if self.mix.probabilities is not None and len(self.mix.probabilities) != mixed:
                raise ValueError(f"mix.probabilities: give one per example source of data.train ({mixed}), got "
                                 f"{len(self.mix.probabilities)}")
        return self

    @property
    def corpus(self) -> str | None:
        """The corpus directory of a pretraining run, or None for example sources."""
        return self.train[0].corpus if self.train[0].replay is None else None

    @property
    def replay(self) -> SourceConfig | None:
        """The corpus replayed during fine-tuning on examples, if any."""
        return next((s for s in self.train if s.replay is not None), None)


class LoraConfig(_Strict):
    enabled: bool = True
    rank: int = Field(default=8, ge=1)
    alpha: float = 16
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(default_factory=lambda: ["q_proj", "v_proj", "o_proj"])
    trainable_tokens: Literal["auto"] | list[str | int] | None = Field(
        default=None, description="output-head rows trained beside the adapter (peft trainable_token_indices): "
        "'auto' = the answer tokens the base never learned to emit (tunelab.model.untrained_tokens), or a list "
        "of tokens (each one token of the tokenizer) or token ids")

    @model_validator(mode="after")
    def _tokens_listed(self):
        if isinstance(self.trainable_tokens, list) and not self.trainable_tokens:
            raise ValueError("trainable_tokens is an empty list: leave it out, or give 'auto' or some tokens")
        if self.trainable_tokens is not None and not self.enabled:
            raise ValueError("trainable_tokens trains rows beside a LoRA adapter: without LoRA every row trains")
        return self


class DivergenceConfig(_Strict):
    """When a run that has stopped learning or runs away is stopped (`tunelab.train.divergence`)."""

    enabled: bool = True
    flat_steps: int = Field(default=10, ge=2, description="steps of a zero gradient and an unmoving loss")
    spike_factor: float = Field(default=3.0, gt=1, description="a spike: this many times the running loss …")
    spike_rise: float = Field(default=1.0, ge=0, description="… and this many nats above it")
    spike_steps: int = Field(default=10, ge=1, description="steps a spike must last")


class GRPOConfig(_Strict):
    """`train.method: grpo` (`tunelab.train.grpo_method`): completions sampled with tunelab's own decoding core,
    scored by `rewards`, trained on their group-normalised advantages (`tunelab.train.grpo`). Names and defaults
    follow TRL's GRPOConfig; `train.batch_size` counts prompts, each sampled `num_generations` times."""

    num_generations: int = Field(default=8, ge=2, description="completions sampled per prompt (a group)")
    max_completion_length: int = Field(default=64, ge=1, description="tokens a completion may have")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature (also divides the logits "
                                                               "the log-probabilities come from, as TRL)")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0: off")
    beta: float = Field(default=0.0, ge=0, description="weight of the KL term to the reference (the model with "
                                                        "its LoRA adapter off); 0: no reference computed")
    epsilon: float = Field(default=0.2, ge=0, description="the clip range's lower side (TRL's epsilon)")
    epsilon_high: float | None = Field(default=None, ge=0, description="its upper side (DAPO's clip-higher); "
                                                                        "default: epsilon")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        default="dapo", description="how token losses are averaged (tunelab.train.grpo)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group", description="divide advantages by the group's std, the batch's, or not (Dr. GRPO)")
    mask_truncated_completions: bool = Field(
        default=False, description="train on no token of a completion cut at max_completion_length (DAPO)")
    num_iterations: int = Field(
        default=1, ge=1, description="optimizer steps on each generation batch (TRL's num_iterations; the old "
                                     "policy's log-probabilities are kept from sampling time): train.max_steps "
                                     "and epochs count optimizer steps, a generation every num_iterations")
    zero_variance: Literal["keep", "skip", "resample"] = Field(
        default="keep", description="groups whose completions all scored the same teach nothing: keep them in the "
                                    "batch (TRL), skip their forward and backward, or sample them again (up to "
                                    "resample_rounds times, then skip: DAPO's dynamic sampling)")
    resample_rounds: int = Field(default=2, ge=1, le=16, description="zero_variance: resample: new draws of a group "
                                                                    "that scored all alike, at most")
    rewards: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"task": "arithmetic"}], min_length=1,
        description="reward terms: {task: NAME} (1 when the task's grader accepts the answer), {format: REGEX}, "
                    "{length: {max_tokens, cache}}, {function: file.py:name}; each with an optional weight")


class PreferenceConfig(_Strict):
    """The preference loss of `train.method: dpo` (`tunelab.train.preference`)."""

    loss: Literal["sigmoid", "ipo", "simpo"] = Field(
        default="sigmoid", description="sigmoid: DPO; ipo: IPO; simpo: SimPO (reference-free, length-normalised)")
    beta: float = Field(default=0.1, gt=0, description="DPO/IPO's β (τ for IPO); SimPO's reward scale")
    simpo_gamma: float = Field(default=0.5, ge=0, description="SimPO's target reward margin γ")
    sft_weight: float = Field(default=0.0, ge=0, description="weight of the chosen answers' NLL added to the loss")


class TrainConfig(_Strict):
    method: Literal["sft", "dpo", "grpo"] = Field(
        default="sft", description="sft: learn the answers; dpo: learn from preference pairs {prompt, chosen, "
                                   "rejected} (`tunelab data prefs`) with train.preference's loss; grpo: learn "
                                   "from sampled answers scored by train.grpo's rewards")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    epochs: float = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(default=4, ge=1, description="rows per micro-batch (packed rows if packing)")
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    device: Text = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?|npu(:\d+)?)$",
                         description="auto: this process's GPU, else an Ascend NPU, else MPS, else the CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the GPU does it natively, else fp16 with a gradient "
                                    "scaler; fp32 on a CPU. bf16 on a CPU only where its matmuls are clearly "
                                    "faster than fp32 (model/device.py)")
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


EvalMode = Literal["generate", "loglik", "perplexity"]


class EvalTaskConfig(_Strict):
    """One evaluation entry. `tunelab eval` builds the same entries from its flags (`tunelab.eval.sets` turns
    them into what is run, for both), so a mistake is the same error from a recipe and from the command line."""

    task: Text
    name: Text | None = Field(default=None, description="label for results (default: the task name)")
    source: SourceConfig
    limit: int | None = Field(default=None, ge=1)
    ability: bool = Field(default=False, description="an original ability whose retention is checked")
    fewshot: int = Field(default=0, ge=0, description=(
        "the set's first k examples given as worked examples, earlier user/assistant turns before every prompt "
        "(lm-eval's fewshot_as_multiturn), and not scored: a chat base is asked the way it reads best"))
    mode: EvalMode | None = Field(
        default=None, description="one of the task's modes: generate, loglik (choice, cola, qqp), perplexity "
                                  "(ppl); default: eval.mode when the task has it, else the task's first")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="task settings, e.g. {segmentation: char} or {window: 512}")

    @property
    def label(self) -> str:
        return self.name or self.task


class EvalConfig(_Strict):
    tasks: list[EvalTaskConfig] = Field(default_factory=list)
    mode: EvalMode | None = Field(
        default=None, description="the mode of every entry without its own whose task has it (the others run "
                                  "their default); an error when no task has it")
    options: dict[str, Any] = Field(
        default_factory=dict, description="settings for every task that has them, e.g. {window: 512}; an "
                                          "entry's own options win; an error when no task has one")
    batch_size: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    baseline: bool = Field(default=True, description="evaluate the base model before training")
    device: Text | None = Field(default=None, pattern=r"^(auto|cpu|mps|cuda(:\d+)?|npu(:\d+)?)$",
                                description="where models are evaluated (default: train.device in a run, else auto)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the GPU does it natively, fp16 on older GPUs, fp32 on a CPU")
    checkpoints: Literal["all", "last"] = "all"
    retention_threshold: float = Field(default=0.9, ge=0)
    retention_min_base: float = Field(
        default=5.0, ge=0, description="a base below this F1/EM (0-100) is too close to zero to judge retention "
                                       "against: the verdict says it cannot judge")


class ScoreConfig(_Strict):
    formula: Literal["stage1", "stage2"] = "stage1"
    total_params: float | None = None
    accuracy_task: Text = "arithmetic"


class Recipe(_Strict):
    # a directory name under output_dir: '..' was the working directory itself, 300 characters an OSError
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    seed: int = 0
    output_dir: Text = "runs"
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    description: str = ""
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "swanlab"]] = Field(
        default_factory=lambda: ["tensorboard"], description=(
            "the dashboards this run logs to (`tunelab.track`): per step loss, lr, grad norm, tokens/s, MFU, memory; "
            "per checkpoint every task's metrics, retention and the score. [] logs to none"))

    @model_validator(mode="before")
    @classmethod
    def _scratch_trains_every_weight(cls, raw: Any) -> Any:
        """A model built from scratch trains all its weights: LoRA (a low-rank update of random weights) is off
        unless the recipe has a `lora` section."""
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and raw["model"].get("from_scratch") \
                and raw.get("lora") is None:
            raw = {**raw, "lora": {"enabled": False}}
        return raw

    @model_validator(mode="after")
    def _sharding_takes_plain_weights(self):
        """FSDP2 shards float parameters and torch's optimizers' states: bitsandbytes' packed 4-/8-bit weights and
        8-bit optimizer states are neither (QLoRA fits one card anyway: that is what it is for)."""
        if self.train.strategy == "fsdp" and self.model.quantization != "none":
            raise ValueError("train.strategy fsdp shards float weights; a quantised base (model.quantization) "
                             "trains with train.strategy: ddp")
        if self.train.strategy == "fsdp" and self.train.optimizer != "adamw":
            raise ValueError(f"train.strategy fsdp shards torch's AdamW states; train.optimizer "
                             f"{self.train.optimizer} goes with train.strategy: ddp")
        return self

    @model_validator(mode="after")
    def _quantized_base_needs_lora(self):
        """A quantised base is frozen: its 4-/8-bit weights take no optimizer step, so only adapters train."""
        if self.model.quantization != "none" and not self.lora.enabled:
            raise ValueError(f"model.quantization: {self.model.quantization} freezes the base model in "
                             f"{self.model.quantization}; it trains LoRA adapters only: set lora.enabled: true (or "
                             "model.quantization: none for a full fine-tune)")
        return self

    @model_validator(mode="after")
    def _preference_tuning(self):
        """DPO and IPO compare the policy with its reference: the model with its LoRA adapter switched off, so no
        second copy is held; a full fine-tune has no such reference (SimPO needs none). Pairs come from files."""
        if self.train.method != "dpo":
            return self
        if not self.lora.enabled and self.train.preference.loss != "simpo":
            raise ValueError(f"train.method dpo with the {self.train.preference.loss} loss takes its reference from "
                             "the base under a LoRA adapter: set lora.enabled: true (or train.preference.loss: "
                             "simpo, which needs no reference)")
        if self.data.corpus is not None or self.data.replay is not None:
            raise ValueError("train.method dpo trains on preference pairs, not on a corpus")
        if self.data.mix is not None:
            raise ValueError("train.method dpo reads its pairs from files as they are: data.mix mixes example "
                             "sources for sft")
        if any(src.path is None for src in [*self.data.train, *self.data.val]):
            raise ValueError("train.method dpo reads preference pairs from files: every data.train and data.val "
                             "source is a path (`tunelab data prefs` writes them)")
        return self

    @model_validator(mode="after")
    def _reinforcement(self):
        """GRPO samples answers to the recipe's example prompts and scores them; its KL term's reference is the
        model with its LoRA adapter off, and sampling runs on whole (unsharded) weights."""
        if self.train.method != "grpo":
            return self
        if self.data.corpus is not None or self.data.replay is not None:
            raise ValueError("train.method grpo samples answers to prompts: its data.train are example sources "
                             "(prompts with reference answers), not a corpus")
        if self.train.grpo.beta > 0 and not self.lora.enabled:
            raise ValueError("train.grpo.beta > 0 takes its reference from the base under a LoRA adapter: set "
                             "lora.enabled: true, or train.grpo.beta: 0")
        if self.train.strategy == "fsdp":
            raise ValueError("train.method grpo samples with whole weights on each process: train.strategy ddp")
        return self

    @model_validator(mode="after")
    def _held_out_pairs(self):
        if self.data.val and self.train.method != "dpo":
            raise ValueError("data.val holds held-out preference pairs for train.method dpo; a fine-tuning run is "
                             "measured by its eval tasks (and a corpus's val split)")
        if self.data.val and self.train.val_blocks is not None:
            raise ValueError("train.val_blocks counts a corpus's val blocks; held-out pairs (data.val) are all "
                             "used: give fewer with data.val.N.count")
        return self

    @model_validator(mode="after")
    def _validation_needs_a_corpus(self):
        """Validation loss is measured on a corpus's val split: the pretraining corpus, or the corpus a fine-tuning
        run replays (there it tracks what the fine-tuning costs the language model). Early stopping on it only
        makes sense when it is the objective, i.e. pretraining."""
        if self.data.corpus is None and not self.data.val:  # (held-out pairs: validated as a corpus is)
            allowed = ("eval_every", "val_blocks") if self.data.replay is not None else ()
            for key in ("eval_every", "val_blocks", "early_stopping_patience"):
                if getattr(self.train, key) is None or key in allowed:
                    continue
                if self.data.replay is not None:  # early stopping
                    raise ValueError("train.early_stopping_patience stops pretraining on its validation loss; a "
                                     "replayed corpus's loss is measured (train.eval_every) but is not what "
                                     "fine-tuning optimises")
                raise ValueError(f"train.{key} needs a corpus source: validation loss is measured on a "
                                 "corpus's val split (a pretraining corpus, or one replayed while fine-tuning)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# --- MindFormers aliases -------------------------------------------------------------------------

MINDFORMERS_MODULES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
                       "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def mindformers_target_to_hf(pattern: str) -> str:
    """Map MindFormers module names inside a target regex to HF names: '.*wq|.*wv' -> '.*q_proj|.*v_proj'."""
    return re.sub(r"\b(wq|wk|wv|wo|w1|w2|w3)\b", lambda m: MINDFORMERS_MODULES[m.group(1)], pattern)


def _section(raw: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    """The recipe's `key` section as a mapping (empty when absent), for an alias to merge into."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TunelabError(f"expected a mapping, got {type(value).__name__}", file=file, field=key)
    return value


def _apply_aliases(raw: dict[str, Any], file: str) -> dict[str, Any]:
    raw = dict(raw)
    runner = raw.pop("runner_config", None)
    if runner is not None:
        if not isinstance(runner, dict):
            raise TunelabError("expected a mapping", file=file, field="runner_config")
        train = dict(_section(raw, "train", file))
        for key, value in runner.items():
            if key not in ("epochs", "batch_size"):
                raise TunelabError("unknown key (runner_config accepts epochs, batch_size)", file=file,
                                   field=f"runner_config.{key}")
            train[key] = value
        raw["train"] = train
    pet = raw.pop("pet_config", None)
    if pet is not None:
        if not isinstance(pet, dict):
            raise TunelabError("expected a mapping", file=file, field="pet_config")
        lora = dict(_section(raw, "lora", file))
        names = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
                 "target_modules": "target_modules"}
        for key, value in pet.items():
            if key == "pet_type":
                if str(value).lower() != "lora":
                    raise TunelabError(f"only pet_type 'lora' is supported, got '{value}'", file=file,
                                       field="pet_config.pet_type")
                lora["enabled"] = True
            elif key in names:
                if key == "target_modules" and isinstance(value, str):
                    value = mindformers_target_to_hf(value)
                lora[names[key]] = value
            else:
                raise TunelabError(f"unknown key (accepted: pet_type, {', '.join(names)})", file=file,
                                   field=f"pet_config.{key}")
        raw["lora"] = lora
    return raw


# --- loading and overrides -----------------------------------------------------------------------

def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a numeric part indexes a list (`data.train.0.path`)."""
    keys = dotted.split(".")
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise TunelabError(f"'{key}' is not an index of a list of {len(node)}", field=dotted)
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise TunelabError(f"'{keys[i - 1]}' is not a section", field=dotted)
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse `key.sub=value` strings; values are read as YAML scalars (so 3, 1e-3, true, [a, b] work)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise TunelabError(f"expects key=value, got '{pair}'", field="overrides")
        key, value = pair.split("=", 1)
        if "" in (k.strip() for k in key.split(".")):  # '=5', 'train..lr=1'
            raise TunelabError(f"expects key=value with a dotted key such as train.lr, got '{pair}'",
                               field="overrides")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        out.append((key.strip(), parsed))
    return out


def _exists(path: Path, kind: str = "any") -> bool:
    """Whether `path` exists (as a file / a directory for `kind`); a path the file system cannot even look up
    (a name longer than it allows) does not, instead of raising OSError."""
    try:
        return {"any": path.exists, "file": path.is_file, "dir": path.is_dir}[kind]()
    except OSError:
        return False


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Resolve relative data paths against the recipe's folder when they exist there, else the CWD."""
    def resolve(p: str) -> str:
        cand = Path(p)
        if cand.is_absolute() or _exists(cand):
            return p
        alt = base / cand
        return str(alt) if _exists(alt) else p

    def resolve_glob(p: str) -> str:
        """A data file or a glob of them (`shards/*.parquet`), else `p` as it is (a hub name)."""
        if not _is_glob(p) or Path(p).is_absolute() or _glob(p):
            return resolve(p)
        return str(base / p) if _glob(str(base / p)) else p
    for src in [*recipe.data.train, *(t.source for t in recipe.eval.tasks)]:
        if src.path:
            src.path = resolve(src.path)
        if src.hf:
            src.hf = resolve_glob(src.hf)
        if isinstance(src.data_files, str):
            src.data_files = resolve_glob(src.data_files)
        elif isinstance(src.data_files, list):
            src.data_files = [resolve_glob(f) for f in src.data_files]
        elif isinstance(src.data_files, dict):
            src.data_files = {k: resolve_glob(v) if isinstance(v, str) else [resolve_glob(f) for f in v]
                              for k, v in src.data_files.items()}
        if src.corpus:
            src.corpus = resolve(src.corpus)
        if src.build:
            src.build.inputs = [resolve(p) for p in src.build.inputs]
            if isinstance(src.build.tokenizer, str):
                src.build.tokenizer = resolve(src.build.tokenizer)
    if recipe.model.path and not recipe.model.path.startswith(("hf:",)):
        recipe.model.path = resolve(recipe.model.path)
    for term in recipe.train.grpo.rewards:  # a reward function in a file beside the recipe: `my_rewards.py:name`
        function = term.get("function")
        if isinstance(function, str) and ".py:" in function:
            file, name = function.rsplit(":", 1)
            term["function"] = f"{resolve(file)}:{name}"


# the files a Hugging Face `hf:` source names by their suffix (load_dataset's packaged builders read them)
HF_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".csv.gz", ".json.gz", ".jsonl.gz")


def _is_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _glob(p: str) -> list[str]:
    import glob
    return glob.glob(p, recursive=True)


def hf_names_local_files(name: str) -> bool:
    """Whether an `hf:` value names local data files (a file by its suffix, or a glob) rather than a hub dataset
    or a folder: such a name that matches nothing is a missing file, not a hub name."""
    return _is_glob(name) or name.lower().endswith(HF_FILE_SUFFIXES)


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_data: bool = True) -> Recipe:
    """Load and validate a recipe file, applying aliases then `--set` overrides; `check_data=False` for what
    reads no data (a memory plan), so that a recipe can be checked before its files are there."""
    raw, text = read_recipe_raw(path, overrides)
    return recipe_from_raw(raw, path, text, check_data)


def read_recipe_raw(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """(the recipe as written, MindFormers aliases mapped and `--set` overrides applied; the file's text), not yet
    validated: what a sweep changes field by field before each trial validates it (`recipe_from_raw`)."""
    p = Path(path)
    from tunelab.records import read_yaml
    raw, text = read_yaml(p)
    if not isinstance(raw, dict):
        raise TunelabError("a recipe must be a YAML mapping", file=p)
    raw = _apply_aliases(raw, str(p))
    for key, value in parse_overrides(overrides or []):
        _set_path(raw, key, value)
    return raw, text


def recipe_from_raw(raw: dict[str, Any], path: str | Path, text: str = "", check_data: bool = True) -> Recipe:
    """Validate a raw recipe read from `path`: relative data paths resolve against its folder, and errors name
    its lines (`text`)."""
    p = Path(path)
    recipe = validate_recipe(raw, p, text)
    _resolve_paths(recipe, p.parent)
    if check_data:
        _check_data_files(recipe, p, text)
    return recipe


def set_field(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the dotted field `dotted` of a raw recipe (`lora.rank`, `data.train.0.count`), as `--set` does."""
    _set_path(raw, dotted, value)


def _check_data_files(recipe: Recipe, file: Path, text: str) -> None:
    """A missing data file is reported when the recipe loads, before a run directory is created."""
    built = {s.corpus for s in recipe.data.train if s.build}  # made by the run before anything reads them
    sources = [(("data", "train", i), s) for i, s in enumerate(recipe.data.train)]
    sources += [(("eval", "tasks", i, "source"), t.source) for i, t in enumerate(recipe.eval.tasks)]
    for loc, src in sources:
        if src.path and not _exists(Path(src.path)):
            loc = loc + ("path",)
            raise TunelabError(f"data file not found: {src.path}", file=file, line=line_of_key(text, loc),
                               field=".".join(str(k) for k in loc))
        if src.hf and hf_names_local_files(src.hf) and not (_glob(src.hf) if _is_glob(src.hf) else
                                                            _exists(Path(src.hf), "file")):
            loc = loc + ("hf",)
            raise TunelabError(f"no data file matches {src.hf}", file=file, line=line_of_key(text, loc),
                               field=".".join(str(k) for k in loc))
        if src.corpus and src.corpus not in built and not _exists(Path(src.corpus) / "meta.json", "file"):
            loc = loc + ("corpus",)
            what = "not a finished corpus directory (no meta.json)" if _exists(Path(src.corpus), "dir") else "not found"
            raise TunelabError(f"corpus {src.corpus}: {what}; prepare it with `tunelab data corpus`", file=file,
                               line=line_of_key(text, loc), field=".".join(str(k) for k in loc))


def validate_recipe(raw: dict[str, Any], file: str | Path = "<recipe>", text: str = "") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise schema_error(e, file, text) from None


def validate_eval(raw: dict[str, Any]) -> EvalConfig:
    """An `eval:` section on its own (what `tunelab eval` builds from its flags); errors name `eval.…` fields
    as they would in a recipe."""
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise schema_error(e, prefix=("eval",)) from None


def schema_error(e: ValidationError, file: str | Path | None = None, text: str = "",
                 prefix: tuple = ()) -> TunelabError:
    """The first problem of a validation error as one TunelabError naming the field (and its line in `text`)."""
    loc, kind, msg, others = _first_problem(e.errors())
    loc = prefix + loc
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "missing required key"
    line = line_of_key(text, loc) if text else None
    more = f" (and {others} more problem(s))" if others else ""
    return TunelabError(msg + more, file=file, line=line, field=".".join(str(x) for x in loc) or None)


def _first_problem(errors: list[dict]) -> tuple[tuple, str, str, int]:
    """(field path, error type, message, how many other problems) of the first problem.

    pydantic reports every branch of a union (`tokenizer: str | TokenizerBuild`) under the branch's tag
    ('tokenizer.str', 'tokenizer.TokenizerBuild.vocab_size'). The branch whose type matched the input is the one
    the user meant, so its problem is the one named, without the tag; when no branch's type matched, the field
    itself is named with what each branch expects."""
    err, loc = errors[0], tuple(errors[0]["loc"])
    at = next((i for i, x in enumerate(loc) if _is_union_tag(x)), None)
    if at is None:
        return loc, err["type"], err["msg"], len(errors) - 1
    field = loc[:at]
    branches = [e for e in errors if len(e["loc"]) > at and tuple(e["loc"])[:at] == field
                and _is_union_tag(e["loc"][at])]
    others = len(errors) - len(branches)
    matched = [e for e in branches if len(e["loc"]) > at + 1 or not e["type"].endswith("_type")]
    if not matched:
        return field, "union", "; or ".join(e["msg"] for e in branches), others
    e = matched[0]
    return (field + tuple(x for x in e["loc"][at + 1:] if not _is_union_tag(x)), e["type"], e["msg"],
            others + len(matched) - 1)


def _is_union_tag(part) -> bool:
    """Whether a pydantic error location part names a union branch ('str', 'constrained-str', 'list[str]',
    'TokenizerBuild') rather than a recipe key (snake_case) or a list index."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or "-" in part
                                      or part in {"str", "int", "float", "bool", "dict", "list", "none"})


def line_of_key(text: str, loc: tuple) -> int | None:
    """Line number of the key at `loc` (e.g. ('eval', 'tasks', 0, 'source', 'count')) within the YAML text.

    Walks the YAML node tree so a key name used in several sections points at the right one; falls back to
    the first line naming the last key when the path is not in the text (e.g. it came from an alias or --set).
    """
    try:
        node = yaml.compose(text)
        line = None
        for k in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(k, str):
                pair = next(((kn, vn) for kn, vn in node.value if kn.value == k), None)
                if pair is None:
                    raise LookupError(k)
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and 0 <= k < len(node.value):
                node = node.value[k]
                line = node.start_mark.line + 1
            else:
                raise LookupError(k)
        if line is not None:
            return line
    except (yaml.YAMLError, LookupError):
        pass
    keys = [k for k in loc if isinstance(k, str)]
    if not keys:
        return None
    pattern = re.compile(rf"^\s*-?\s*{re.escape(keys[-1])}\s*:")
    for i, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return i
    return None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
