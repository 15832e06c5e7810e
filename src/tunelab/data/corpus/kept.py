"""`Kept`: a cleaned document on its way from a chunk worker, through the packer, to the corpus writer.

Its own module because the chunk worker (`chunks`) and the packer below it (`packing`) both fill it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.corpus.clean import CleanDoc


@dataclass
class Kept:
    """A document that survived cleaning (the main process drops duplicates), its split and (when tokenised)
    its blocks. A worker that tokenised it sends back no text (`doc` None): the blocks hold it, and the
    digest, lengths and docs.jsonl record are all the main process needs."""
    doc: CleanDoc | None
    split: str
    digest: bytes = b""           # blake2b of the text, for exact-duplicate removal
    chars: int = 0                # characters of the cleaned text
    raw_chars: int = 0            # characters before cleaning
    sentences: int = 0
    # every block's ids, each block ending with EOT, and each block's length (EOT included): lists from the
    # packer, views of the chunk's arrays in the main process
    tokens: Any = None
    block_lengths: Any = None
    soft_cuts: int = 0            # long sentences cut at a comma/colon/space
    token_cuts: int = 0           # long sentences cut at a bare token boundary
    record: str = ""              # its docs.jsonl line after '{"doc": N, ' (built in the worker)
