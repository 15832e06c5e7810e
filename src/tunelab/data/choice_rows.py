"""Multiple-choice questions as training examples: the options shuffled, the answer's style.

A question file often has its right answers under a few letters (exam writers favour C; a generator may always
put it first), and a model fine-tuned on it learns the letter, not the question: it then answers "always B" and
scores what B happens to score. `shuffle_options` (a source's setting) reorders each question's options with a
seeded generator, moving the answer with its option, and places the right option so that every letter is right
equally often across the source (within one): the balance is by construction, not by chance. The prompt is
rendered again from the question and its new options (`formats.choice_prompt`, the evaluation's own renderer, in
the question's language), so training and evaluation show the same layout.

`answer_style` is what the model is taught to write: the letter ("B", what the prompt asks for and what the
`choice` task's letter continuation scores), the letter and the option ("B. Paris", the `letter_text`
continuation), or the option and then its letter ("Paris (B)", `text_letter`). The last is for a small model
that reads the passage but cannot bind an answer to its letter at once: SmolLM2-135M-Instruct picks the
passage's answer 85 % of the time by its text's likelihood when the options are not listed, and is at chance by
the letter when they are. Written first, the answer's text conditions the letter, which the graders read from
"(B)" as they read any named option.
"""

from __future__ import annotations

import random
from dataclasses import replace

from tunelab.data.examples import Example
from tunelab.data.formats import LETTERS, choice_prompt
from tunelab.errors import TunelabError

ANSWER_STYLES = ("letter", "letter_text", "text_letter")
CONTINUATIONS = ("letter", "text", "letter_text", "text_letter")


def choice_continuations(choices: list[str], style: str) -> list[str]:
    """What stands for each option after the prompt: its letter, its text exactly as written, or both (letter
    first or text first). The `choice` task scores these continuations; an answer style trains one of them."""
    if style == "letter":
        return list(LETTERS[: len(choices)])
    if style == "text":
        return list(choices)
    if style == "letter_text":
        return [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    if style == "text_letter":
        return [f"{c} ({LETTERS[i]})" for i, c in enumerate(choices)]
    raise TunelabError(f"unknown continuation '{style}' (choose from {', '.join(CONTINUATIONS)})",
                       field="continuation")


def shuffled(example: Example, rng: random.Random, right: int) -> Example:
    """`example` with its options in a new order, the right one at index `right`, the prompt rendered again."""
    wrong = [c for i, c in enumerate(example.choices) if i != example.label]
    rng.shuffle(wrong)
    choices = wrong[:right] + [example.choices[example.label]] + wrong[right:]
    return replace(example, choices=choices, label=right, meta=dict(example.meta),
                   instruction=choice_prompt(example.meta["question"], choices, example.meta["lang"]))


def choice_training(examples: list[Example], shuffle_options: bool, answer_style: str, seed: int,
                    where: str = "") -> list[Example]:
    """The source's questions as it trains them: shuffled (seeded, letters balanced) and answered in
    `answer_style`. Every example must be a question record; `where` (`data.train.0.`) prefixes the recipe field
    an error names."""
    if answer_style not in ANSWER_STYLES:
        raise TunelabError(f"unknown answer style '{answer_style}' (choose from {', '.join(ANSWER_STYLES)})",
                           field=f"{where}answer_style")
    setting = "shuffle_options" if shuffle_options else "answer_style"
    for ex in examples:
        if len(ex.choices) < 2 or ex.label is None or (shuffle_options and "question" not in ex.meta):
            raise TunelabError(f"example '{ex.id}' is not a multiple-choice question record ({{question, choices | "
                               f"A, B, …, answer}}): {setting} applies to those", field=f"{where}{setting}")
    rng = random.Random(seed)
    out = []
    if shuffle_options:
        by_size: dict[int, list[int]] = {}  # each option count balances its own letters
        for i, ex in enumerate(examples):
            by_size.setdefault(len(ex.choices), []).append(i)
        right = [0] * len(examples)
        for n, members in sorted(by_size.items()):
            places = [k % n for k in range(len(members))]
            rng.shuffle(places)
            for i, place in zip(members, places):
                right[i] = place
        examples = [shuffled(ex, rng, right[i]) for i, ex in enumerate(examples)]
    for ex in examples:
        out.append(replace(ex, output=choice_continuations(ex.choices, answer_style)[ex.label]))
    return out
