"""The recipe's `data:` section: the training sources, how they are mixed, templated and packed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.recipe.fields import StrictSection, Text
from tunelab.recipe.source import SourceConfig

LOSS_ON_RENAMED = {"answer": "assistant"}  # older recipes' name for training every assistant turn


class MixConfig(StrictSection):
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


class SelfReplayConfig(StrictSection):
    """`data.replay: self`: training examples whose prompts are general instructions and whose answers are the
    base's own, generated once in its own template and cached (`tunelab.eval.base_answers`), so the model is asked
    to keep saying what it said while it learns the task. Written as `replay: self` (a tenth of the training
    examples), or with settings."""

    of: Literal["self"] = "self"
    count: int | None = Field(default=None, ge=1, description="replay examples (default: `fraction`)")
    fraction: float | None = Field(default=None, gt=0, lt=1, description=(
        "replay examples as a fraction of all training examples (default 0.1 without count)"))
    prompts: list[Text] = Field(default_factory=lambda: ["shipped"], min_length=1, description=(
        "where the prompts come from: shipped (tunelab's general prompts, English and Chinese, none of which "
        "base_agreement scores), forms (its form requests: lists, letters, sentence and word counts, English and "
        "Chinese, none of which the forms task judges), magpie (instructions the base writes itself given only its "
        "template's user-turn header, as Magpie does), or JSONL files of {prompt}"))
    magpie_count: int = Field(default=256, ge=1, description="instructions to draw from the base for `magpie`")
    max_new_tokens: int = Field(default=128, ge=8, description="the base's answers are cut here; a cut answer is "
                                                                "replayed without an end of turn (it would teach "
                                                                "stopping mid-way)")
    loops: Literal["keep", "cut"] = Field(default="keep", description=(
        "an answer more than half of whose 4-grams repeat (the forms task's loop): keep it whole, or cut it where "
        "its loop begins (its longest start that reads as prose, replayed without an end of turn; dropped when "
        "fewer than 8 words are left), so the tuned model is not taught to go on repeating itself"))
    seed: int = 0
    file: Text | None = Field(default=None, description=(
        "the prepared replay examples (JSONL {id, instruction, output}); tunelab writes and sets it before training, "
        "give it to replay a file of your own"))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"of": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _one_size(self):
        if self.count is not None and self.fraction is not None:
            raise ValueError("give count or fraction, not both")
        return self


class DataConfig(StrictSection):
    train: list[SourceConfig] = Field(min_length=1)
    val: list[SourceConfig] = Field(
        default_factory=list, description="held-out preference pairs (train.method dpo): the loss, reward accuracy "
                                          "and margins on them at every checkpoint and every train.eval_every steps")
    mix: MixConfig | None = Field(default=None, description="interleave the example sources (default: one after "
                                                            "the other, all of each)")
    replay: SelfReplayConfig | None = Field(default=None, description=(
        "self: replay the base's own answers to general prompts while fine-tuning (keeps what it knew)"))
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
    loss_on: Literal["assistant", "last_turn", "all"] = Field(
        default="assistant", description="which tokens train: every assistant turn with its end-of-turn token "
                                         "(assistant; 'answer', its older name, is read as it), the last one only "
                                         "(last_turn: templates that rewrite earlier turns), or every token (all)")
    sampling: Literal["epoch", "random"] = Field(
        default="epoch", description="corpus blocks: each once per epoch in a seeded order, or drawn at random "
                                     "with replacement")

    @field_validator("loss_on", mode="before")
    @classmethod
    def _older_names(cls, value: Any) -> Any:
        """Older recipes' names, mapped here so every reader of the recipe sees the current one."""
        return LOSS_ON_RENAMED.get(value, value) if isinstance(value, str) else value

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
    def replay_corpus(self) -> SourceConfig | None:
        """The corpus replayed during fine-tuning on examples, if any."""
        return next((s for s in self.train if s.replay is not None), None)
