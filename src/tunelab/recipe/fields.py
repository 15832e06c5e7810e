"""What every recipe section shares: strict validation, a non-empty text type, and the vocabulary bounds
(a trained tokenizer's and a preset's)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MIN_VOCAB = 300       # a trained BPE's smallest vocabulary: the 256 bytes, the special tokens and room for merges
# 4x the largest vocabularies in use (Gemma's 256k); the BPE trainer allocates for the size asked, so 2**31
# aborted the process (a 141 GB allocation) instead of raising
MAX_VOCAB = 1 << 20
# a path, name or key that must say something: an empty `corpus:` read as "." and was refused as an existing output
Text = Annotated[str, Field(min_length=1)]

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?|npu(:\d+)?)$"   # what `train.device` and `eval.device` accept


class StrictSection(BaseModel):
    """A recipe section: an unknown key is an error rather than a setting silently ignored, and a value
    assigned after loading (a resolved path) is validated as one read from the file is."""

    # no number in a recipe is meaningfully infinite or NaN: `lr: .inf` or `epochs: .inf` once passed validation
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
