"""Turn a recipe's data sources (files, built-in generators, Hugging Face datasets) into Examples: one source
(`load_source`, also an eval entry's), or all of a recipe's training data (`training_examples`, for training and
`data check`), one source after the other or mixed as `data.mix` says."""

from __future__ import annotations

import random

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, SourceConfig
from tunelab.recipe.data import SelfReplayConfig


def generate_records(source: SourceConfig) -> tuple[list[dict], str]:
    """Run a built-in generator; returns (records, their format name)."""
    if source.generate == "arithmetic":
        from tunelab.data.synthetic.arithmetic import generate
        return generate(source.count or 1000, seed=source.seed, **source.options), "competition"
    if source.generate == "choice":
        from tunelab.data.synthetic.choice import generate
        return generate(source.count or 1000, seed=source.seed, **source.options), "choice"
    from tunelab.data.synthetic.reading import generate
    return generate(source.count or 1000, seed=source.seed, **source.options), "reading"


def load_source(source: SourceConfig, where: str = "") -> list[Example]:
    """Load or generate the examples of one source; `count` subsamples a file reproducibly. `where` (`data.train.0.`)
    prefixes the recipe fields an error about the source's settings names."""
    examples = _source_examples(source, where)
    if source.shuffle_options or source.answer_style != "letter":
        from tunelab.data.choice_rows import choice_training
        examples = choice_training(examples, source.shuffle_options, source.answer_style, source.seed, where)
    return examples


def _source_examples(source: SourceConfig, where: str) -> list[Example]:
    from tunelab.data.formats import examples_from_records, read_examples
    if source.generate:
        records, fmt = generate_records(source)
        return examples_from_records(records, fmt, origin=source.generate)
    if source.hf:
        from tunelab.data.hf import hf_examples
        return hf_examples(source, where)
    examples = read_examples(source.path, source.format, source.fields)
    if source.count is not None and source.count < len(examples):
        examples = random.Random(source.seed).sample(examples, source.count)
    return examples


def training_examples(recipe: Recipe) -> list[Example]:
    """Every example of the recipe's training sources, in order (a corpus source has blocks, not examples)."""
    if recipe.data.corpus:
        raise TunelabError("a corpus source holds token blocks, not examples (see them with `tunelab data "
                           "corpus --show DIR`)", field="data.train")
    per_source = [load_source(src, f"data.train.{i}.") for i, src in enumerate(recipe.data.train)
                  if src.corpus is None]   # a replayed corpus adds token blocks when training starts, not examples
    if recipe.data.mix is not None:
        from tunelab.data.hf import mix_examples
        examples = mix_examples(per_source, recipe.data.mix)
    else:
        examples = [example for source in per_source for example in source]
    if not examples:
        raise TunelabError("the training data is empty", field="data.train")
    if recipe.data.replay is not None:
        examples = examples + self_replay_examples(recipe.data.replay, len(examples))
    return examples


SELF_REPLAY = "replay-self"  # the kind (and `meta["replay"]`) of a replayed answer of the base's own


def self_replay_examples(replay: SelfReplayConfig, task_examples: int) -> list[Example]:
    """`data.replay: self`'s examples, read from its prepared file (the base's own answers, written before training
    by `tunelab.pipeline.self_replay`): `count` of them, or as many as make `fraction` (default 0.1) of all
    training examples, drawn in a seeded order and taken again from the start when the file holds fewer. An answer
    marked `open_end` (the base had not finished it) trains without an end of turn."""
    from tunelab.data.packing import OPEN_END
    from tunelab.records import iter_records, require_str
    if replay.file is None:
        raise TunelabError("data.replay: self needs the base's answers, which `tunelab run`, `tunelab train` and "
                           "`tunelab data show` prepare: run one of them (or give replay.file)", field="data.replay")
    pool = [(str(rec.get("id", line)), require_str(rec, "instruction", replay.file, line),
             require_str(rec, "output", replay.file, line), bool(rec.get(OPEN_END)))
            for line, rec in iter_records(replay.file)]
    if not pool:
        raise TunelabError("no replay examples in the file", file=replay.file, field="data.replay.file")
    fraction = replay.fraction if replay.fraction is not None else 0.1
    n = replay.count or max(1, round(fraction * task_examples / (1 - fraction)))
    random.Random(replay.seed).shuffle(pool)
    drawn = ((k, *pool[k % len(pool)]) for k in range(n))
    return [Example(id=f"{SELF_REPLAY}-{k}-{id_}", instruction=prompt, output=answer, kind=SELF_REPLAY,
                    meta={"replay": "self", **({OPEN_END: True} if open_end else {})})
            for k, id_, prompt, answer, open_end in drawn]
