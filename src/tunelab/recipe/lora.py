"""The recipe's `lora:` section: the adapter trained on a frozen base (off: every weight trains). LoRA by default;
the low-parameter kinds peft ships for the competition's ratio (IA³, VeRA, LN tuning, prompt tuning) by `adapter`."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from tunelab.recipe.fields import StrictSection

# the adapter kinds `lora.adapter` names: the one list (model.lora makes each one's peft config; `tunelab ratio
# --adapter` checks against it when it runs)
Adapter = Literal["lora", "ia3", "vera", "ln_tuning", "prompt_tuning"]
ADAPTERS: tuple[str, ...] = get_args(Adapter)
LORA_TARGETS = ["q_proj", "v_proj", "o_proj"]


def adapter_targets(adapter: str, target_modules: str | list[str] | None) -> str | list[str] | None:
    """The layers adapted: the ones given, else LoRA's default, else None (peft's default for the model type).
    Also for a run's saved recipe, read as a plain mapping (the hand-in)."""
    if target_modules is not None:
        return target_modules
    return list(LORA_TARGETS) if adapter == "lora" else None


class LoraConfig(StrictSection):
    enabled: bool = True
    adapter: Adapter = Field(default="lora", description=(
        "lora: low-rank updates of the target layers; ia3: a learnt scale per output (per input on "
        "feedforward_modules) of each target layer; vera: LoRA with frozen random matrices shared by all layers and "
        "two trained scaling vectors a layer (rank is theirs, e.g. 256); ln_tuning: the norm layers' own weights; "
        "prompt_tuning: virtual_tokens trained embeddings before every input (no weight changes, so nothing "
        "merges: export and the hand-in refuse it; rows are not packed). Each counts its trainable parameters in "
        "the low-parameter ratio (tunelab.model.lora.peft_config)"))
    rank: int = Field(default=8, ge=1, description="lora, vera: the rank")
    alpha: float = Field(default=16, description="lora: the update's scale is alpha / rank")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="lora, vera: dropout on the adapter's input")
    target_modules: str | list[str] | None = Field(default=None, description=(
        "the layers adapted (names, or a regex): lora default [q_proj, v_proj, o_proj]; the other kinds default "
        "to peft's choice for the model type (Llama: ia3 k_proj, v_proj, down_proj; vera q_proj, v_proj; "
        "ln_tuning every norm)"))
    feedforward_modules: str | list[str] | None = Field(default=None, description=(
        "ia3: the target layers scaled on their input rather than output (peft's default for the model type)"))
    virtual_tokens: int = Field(default=20, ge=1, le=512, description=(
        "prompt_tuning: how many trained embeddings go before every input (each one hidden-size vector)"))
    init_text: str | None = Field(default=None, min_length=1, description=(
        "prompt_tuning: the text whose token embeddings the virtual tokens start from (repeated or cut to "
        "virtual_tokens); none: rows of the vocabulary drawn at random"))
    trainable_tokens: Literal["auto"] | list[str | int] | None = Field(
        default=None, description="lora: output-head rows trained beside the adapter (peft trainable_token_indices): "
        "'auto' = the answer tokens the base never learned to emit (tunelab.model.untrained_tokens), or a list "
        "of tokens (each one token of the tokenizer) or token ids")

    @property
    def targets(self) -> str | list[str] | None:
        return adapter_targets(self.adapter, self.target_modules)

    @model_validator(mode="after")
    def _settings_fit_the_adapter(self):
        if isinstance(self.trainable_tokens, list) and not self.trainable_tokens:
            raise ValueError("trainable_tokens is an empty list: leave it out, or give 'auto' or some tokens")
        if self.trainable_tokens is not None and not self.enabled:
            raise ValueError("trainable_tokens trains rows beside a LoRA adapter: without LoRA every row trains")
        if self.trainable_tokens is not None and self.adapter != "lora":
            raise ValueError(f"trainable_tokens trains rows beside a LoRA adapter, not beside {self.adapter}")
        if self.feedforward_modules is not None and self.adapter != "ia3":
            raise ValueError(f"feedforward_modules is an ia3 setting, not {self.adapter}'s")
        if self.adapter != "prompt_tuning":  # by value: a saved recipe writes every default back
            for key in ("virtual_tokens", "init_text"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"{key} is a prompt_tuning setting, not {self.adapter}'s")
        elif self.target_modules is not None:
            raise ValueError("prompt_tuning adds embeddings before the input and adapts no layer: leave "
                             "target_modules out")
        return self
