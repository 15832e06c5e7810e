"""The recipe's `lora:` section: the adapter trained on a frozen base (off: every weight trains)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.recipe.fields import StrictSection


class LoraConfig(StrictSection):
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
