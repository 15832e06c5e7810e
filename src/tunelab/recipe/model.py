"""The recipe's `model:` section: which base (a path, a hub id, a MindFormers .ckpt or a preset), its
precision and quantisation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunelab.recipe.fields import MAX_VOCAB, MIN_VOCAB, StrictSection, Text


class ModelConfig(StrictSection):
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
