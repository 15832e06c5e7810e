"""The one in-memory shape every data format is normalised to before templating."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    """An instruction/response pair. `kind` labels the sub-type (e.g. 'add', 'reading-zh') for breakdowns.

    `answers` holds every acceptable gold answer when a task has several (SQuAD); `output` is the first.
    A multiple-choice question keeps its options in `choices`, exactly as written, and the index of the
    correct one in `label`: the instruction is rendered from them, and tasks read them here rather than
    out of the rendered text.

    A conversation of several turns keeps them all in `messages` ({role: system|user|assistant|tool, content});
    `instruction` and `output` are then its last user turn and last assistant turn (what an evaluation asks and
    grades), and `tools` the tool schemas it was held with, passed to the chat template.
    """

    id: str
    instruction: str
    output: str
    input: str = ""
    kind: str = ""
    answers: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    label: int | None = None
    messages: list[dict] | None = None
    tools: list | None = None
    meta: dict = field(default_factory=dict)
