"""The one in-memory shape every data format is normalised to before templating."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Example:
    """An instruction/response pair. `kind` labels the sub-type (e.g. 'add', 'reading-zh') for breakdowns."""

    id: str
    instruction: str
    output: str
    input: str = ""
    kind: str = ""
