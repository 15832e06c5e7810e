"""The recipe's `eval:` section, also `tunelab eval`'s configuration: the tasks, how they run, and the
retention verdict's thresholds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from tunelab.recipe.fields import DEVICE_PATTERN, StrictSection, Text
from tunelab.recipe.source import SourceConfig

EvalMode = Literal["generate", "loglik", "perplexity"]


class EvalTaskConfig(StrictSection):
    """One evaluation entry. `tunelab eval` builds the same entries from its flags (`tunelab.eval.sets` turns
    them into what is run, for both), so a mistake is the same error from a recipe and from the command line."""

    task: Text
    name: Text | None = Field(default=None, description="label for results (default: the task name)")
    source: SourceConfig | None = Field(default=None, description=(
        "the examples; without it, the set tunelab ships for the task (instructions, knowledge, base_agreement)"))
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
    samples: int | None = Field(default=None, ge=1, le=1024, description=(
        "k answers sampled a prompt besides the greedy one: pass@1…pass@k and majority-vote accuracy (a task "
        "whose answers are right or wrong, in generate mode); default: eval.samples"))
    temperature: float | None = Field(default=None, gt=0, description="the samples' temperature (default: "
                                                                      "eval.temperature)")
    top_p: float | None = Field(default=None, gt=0, le=1, description="the samples' top-p (default: eval.top_p)")

    @property
    def label(self) -> str:
        return self.name or self.task


class EvalConfig(StrictSection):
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
    device: Text | None = Field(default=None, pattern=DEVICE_PATTERN,
                                description="where models are evaluated (default: train.device in a run, else auto)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the GPU does it natively, fp16 on older GPUs, fp32 on a CPU")
    checkpoints: Literal["all", "last"] = "all"
    samples: int | None = Field(default=None, ge=1, le=1024, description=(
        "k answers sampled a prompt, besides the greedy one, for every entry whose task's answers are right or "
        "wrong and that generates: pass@1…pass@k (Chen et al. 2021's unbiased estimator) and maj@k beside the "
        "greedy score, the headroom a GRPO or rejection-sampling run can turn into first answers"))
    temperature: float = Field(default=1.0, gt=0, description="the samples' temperature")
    top_p: float = Field(default=1.0, gt=0, le=1, description="the samples' top-p (nucleus)")
    seed: int = Field(default=0, ge=0, description="the samples' seed: a prompt's k draws depend on it and on the "
                                                   "prompt alone, not on the batch or the set around it")
    retention_threshold: float = Field(default=0.9, ge=0)
    retention_min_base: float = Field(
        default=5.0, ge=0, description="a base below this F1/EM (0-100) is too close to zero to judge retention "
                                       "against: the verdict says it cannot judge")
    scales: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=list, description=(
            "LoRA scales in (0, 1) at which the best checkpoint is evaluated again, its update times the scale "
            "(weight-space interpolation toward the base, as WiSE-FT): the frontier of task accuracy against each "
            "retained ability, one evaluation a scale and no training (`tunelab.pipeline.scale_frontier`)"))

    @field_validator("scales")
    @classmethod
    def _scales_once_each(cls, scales: list[float]) -> list[float]:
        """In increasing order, each once: the frontier is a line along the scale."""
        if len(set(scales)) != len(scales):
            raise ValueError(f"a scale is listed twice: {scales}")
        return sorted(scales)
