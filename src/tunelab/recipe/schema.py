"""The whole recipe: its sections, the run's name and output folder, the dashboards it logs to
(`report_to`), and the rules that span sections (quantisation needs LoRA, DPO needs pairs, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tunelab.recipe.data import DataConfig
from tunelab.recipe.engine import EngineConfig
from tunelab.recipe.eval import EvalConfig
from tunelab.recipe.fields import StrictSection, Text
from tunelab.recipe.lora import LoraConfig
from tunelab.recipe.model import ModelConfig
from tunelab.recipe.score import ScoreConfig
from tunelab.recipe.stages import StageConfig
from tunelab.recipe.train import TrainConfig


class Recipe(StrictSection):
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
    engine: EngineConfig = Field(default_factory=EngineConfig)
    description: str = ""
    stages: list[StageConfig] = Field(default_factory=list, description=(
        "a chain of runs in one recipe (`tunelab.recipe.stages`): each stage the sections it changes, deep-merged "
        "over the recipe's; each continues the one before; the last is this run"))
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

    # each stage's whole recipe, built and validated as the file loads (`tunelab.recipe.loader`)
    _stage_recipes: list["Recipe"] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _vllm_samples_up_to_temperature_2(self):
        """vLLM samples at temperatures in [0, 2] (its SamplingParams refuses more, and its server answers 400):
        a rollout or an eval sample asked hotter through it is refused before training, not at the first draw."""
        if self.engine.kind != "vllm":
            return self
        asked = [(f"train.{self.train.method}.temperature", self.train.sampling.temperature)] \
            if self.train.sampling is not None else []
        if self.eval.samples:
            asked.append(("eval.temperature", self.eval.temperature))
        asked += [(f"eval.tasks.{i}.temperature", t.temperature) for i, t in enumerate(self.eval.tasks)
                  if t.temperature is not None]
        for key, temperature in asked:
            if temperature > 2:
                raise ValueError(f"{key} is {temperature:g}; vLLM (engine.kind: vllm) samples at temperatures up to "
                                 "2: lower it, or sample with engine.kind: embedded")
        return self

    @field_validator("stages")
    @classmethod
    def _a_chain_has_named_stages(cls, stages: list[StageConfig]) -> list[StageConfig]:
        """A chain is two stages or more, each named once (their names are run directories)."""
        if len(stages) == 1:
            raise ValueError("a chain has two stages or more; one stage is the recipe itself (leave stages out)")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"each stage needs a name of its own, got {names}")
        return stages

    @model_validator(mode="after")
    def _handin_needs_five_checkpoints(self):
        """The hand-in the rules ask for is five evenly spaced checkpoints, the run evaluated, its retention
        judged: said before training, not after it. (A chain hands in its model, any stage: checked on each.)"""
        if self.score.handin is None or self.stages:
            return self
        if self.train.num_checkpoints != 5:
            raise ValueError(f"score.handin: the rules ask for five evenly spaced checkpoints; set "
                             f"train.num_checkpoints: 5 (it is {self.train.num_checkpoints})")
        if not any(t.ability for t in self.eval.tasks) or self.score.accuracy_task not in {
                t.label for t in self.eval.tasks}:
            raise ValueError("score.handin: the hand-in gives the accuracy and the retention measured: give "
                             "eval.tasks with score.accuracy_task among them and a task with ability: true")
        return self

    @property
    def stage_recipes(self) -> list["Recipe"]:
        """The chain's stages as whole recipes, first to last (empty for a recipe without `stages`)."""
        return self._stage_recipes

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
        if self.data.corpus is not None or self.data.replay_corpus is not None:
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
        """GRPO and RFT sample answers to the recipe's example prompts and score them; GRPO's KL term's reference
        is the model with its LoRA adapter off, and sampling runs on whole (unsharded) weights."""
        method = self.train.method
        if self.train.sampling is None:
            return self
        if self.data.corpus is not None or self.data.replay_corpus is not None:
            raise ValueError(f"train.method {method} samples answers to prompts: its data.train are example "
                             "sources (prompts with reference answers), not a corpus")
        if method == "grpo" and self.data.replay is not None:
            raise ValueError("data.replay trains the base's own answers as they are, and train.method grpo learns "
                             "only from graded samples of each prompt: use train.method rft (it trains them beside "
                             "the accepted answers), or drop data.replay")
        if method == "grpo" and self.train.grpo.beta > 0 and not self.lora.enabled:
            raise ValueError("train.grpo.beta > 0 takes its reference from the base under a LoRA adapter: set "
                             "lora.enabled: true, or train.grpo.beta: 0")
        if self.train.strategy == "fsdp":
            raise ValueError(f"train.method {method} samples with whole weights on each process: "
                             "train.strategy ddp")
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
            allowed = ("eval_every", "val_blocks") if self.data.replay_corpus is not None else ()
            for key in ("eval_every", "val_blocks", "early_stopping_patience"):
                if getattr(self.train, key) is None or key in allowed:
                    continue
                if self.data.replay_corpus is not None:  # early stopping
                    raise ValueError("train.early_stopping_patience stops pretraining on its validation loss; a "
                                     "replayed corpus's loss is measured (train.eval_every) but is not what "
                                     "fine-tuning optimises")
                raise ValueError(f"train.{key} needs a corpus source: validation loss is measured on a "
                                 "corpus's val split (a pretraining corpus, or one replayed while fine-tuning)")
        return self

    @model_validator(mode="after")
    def _distillation(self):
        """Distilling from the base needs the base beside the trained model without a second copy: the model with
        its LoRA adapter off (a full fine-tune has none, so it names its teacher). `tokens: replay` distils the
        replayed answers of examples, which a corpus run has none of; under FSDP the base's forward gathers
        weights on every process, so a process whose micro-batch has no replay tokens would leave the others
        waiting."""
        d = self.train.distill
        if d is None:
            return self
        if d.teacher is None and not self.lora.enabled:
            raise ValueError("train.distill.teacher: a full fine-tune has no base beside it to distil from (under "
                             "LoRA it is the model with its adapter off): name a teacher model, or set "
                             "lora.enabled: true")
        if d.tokens == "replay" and self.data.corpus is not None:
            raise ValueError("train.distill.tokens: replay distils the base's own answers replayed among the examples; "
                             "a corpus run has none: tokens: all distils every token")
        if d.tokens == "replay" and d.teacher is None and self.train.strategy == "fsdp":
            raise ValueError("train.distill.tokens: replay runs the base's forward on the micro-batches that hold "
                             "replay tokens, which sharded weights cannot do on one process alone: train.strategy "
                             "ddp, or tokens: all")
        return self

    @model_validator(mode="after")
    def _prompt_tuning(self):
        """Prompt tuning's virtual tokens go before every row once (`model.virtual_tokens`): a packed row's later
        samples would go without them. They change no weight, so there is nothing to merge; and the methods that
        score against a reference (the model with its adapter off) or a teacher run the plain model, which has
        no virtual tokens to switch off."""
        if not self.lora.enabled or self.lora.adapter != "prompt_tuning":
            return self
        if self.data.packing:
            raise ValueError("lora.adapter prompt_tuning puts its virtual tokens before each row once, so a packed "
                             "row's later samples would train without them: set data.packing: false")
        if self.train.method not in ("sft", "rft") or self.train.distill is not None:
            what = "train.distill" if self.train.distill is not None else f"train.method {self.train.method}"
            raise ValueError(f"lora.adapter prompt_tuning trains with train.method sft or rft; {what} compares the "
                             "model with a reference or teacher, which is not built for virtual tokens")
        if self.train.save_merged:
            raise ValueError("lora.adapter prompt_tuning changes no weight, so there is nothing to merge: leave "
                             "train.save_merged out")
        return self

    @model_validator(mode="after")
    def _scales_need_an_adapter(self):
        """`eval.scales` scales the best checkpoint's LoRA update (`tunelab.model.lora_scale`) and measures it on
        the eval tasks: a full fine-tune has no update apart from its weights, and without tasks nothing is
        measured. Said before training, not after it."""
        if self.eval.scales and not self.lora.enabled:
            raise ValueError("eval.scales scales a LoRA adapter's update toward the base; a full fine-tune has no "
                             "adapter: set lora.enabled: true, or leave eval.scales out")
        if self.eval.scales and self.lora.adapter != "lora":
            raise ValueError(f"eval.scales scales a LoRA adapter's update toward the base; a {self.lora.adapter} "
                             "adapter's is not a scaled low-rank update: leave eval.scales out")
        if self.eval.scales and not self.eval.tasks:
            raise ValueError("eval.scales evaluates the best checkpoint at each scale on the eval tasks: give "
                             "eval.tasks (with score.accuracy_task among them)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
