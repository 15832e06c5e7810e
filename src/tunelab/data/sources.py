"""Turn a recipe's data sources (files or built-in generators) into Examples: one source (`load_source`, also
an eval entry's), or all of a recipe's training data (`training_examples`, for training and `data check`)."""

from __future__ import annotations

import random

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, SourceConfig


def generate_records(source: SourceConfig) -> tuple[list[dict], str]:
    """Run a built-in generator; returns (records, their format name)."""
    if source.generate == "arithmetic":
        from tunelab.data.generate.arithmetic import generate
        return generate(source.count or 1000, seed=source.seed, **source.options), "competition"
    from tunelab.data.generate.reading import generate
    return generate(source.count or 1000, seed=source.seed, **source.options), "reading"


def load_source(source: SourceConfig) -> list[Example]:
    """Load or generate the examples of one source; `count` subsamples a file reproducibly."""
    from tunelab.data.formats import examples_from_records, read_examples
    if source.generate:
        records, fmt = generate_records(source)
        return examples_from_records(records, fmt, origin=source.generate)
    examples = read_examples(source.path, source.format)
    if source.count is not None and source.count < len(examples):
        examples = random.Random(source.seed).sample(examples, source.count)
    return examples


def training_examples(recipe: Recipe) -> list[Example]:
    """Every example of the recipe's training sources, in order (a corpus source has blocks, not examples)."""
    if recipe.data.corpus:
        raise TunelabError("a corpus source holds token blocks, not examples (see them with `tunelab data "
                           "corpus --show DIR`)", field="data.train")
    examples = []
    for src in recipe.data.train:
        if src.corpus is None:      # a replayed corpus adds token blocks when training starts, not examples
            examples += load_source(src)
    if not examples:
        raise TunelabError("the training data is empty", field="data.train")
    return examples
