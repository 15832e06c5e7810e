"""Build what a recipe trains on before training starts: a corpus directory from its `build` section.

The steps are the verbs a user would run by hand — `tunelab data encyclopedia`, `tunelab tokenizer train`,
`tunelab data corpus` — each skipped when its output already exists, so a rerun (or `--resume`) reuses them
and a failed step leaves nothing that looks finished (each step writes its output atomically).
It sits above the data and model stages because it drives both.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import fields
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.recipe import CorpusBuild, Recipe

log = logging.getLogger(__name__)

_WAIT_SECONDS = 6 * 3600   # other ranks of a distributed run wait this long for rank 0 to build


def build_corpora(recipe: Recipe) -> None:
    """Build every missing corpus directory the recipe's training data names with a `build` section."""
    from tunelab.data.corpus.store import is_corpus_dir
    for i, src in enumerate(recipe.data.train):
        if src.corpus is None or src.build is None or is_corpus_dir(src.corpus):
            continue
        if int(os.environ.get("RANK", "0")) != 0:   # under torchrun, rank 0 builds and the others wait
            _wait_for(Path(src.corpus))
            continue
        build_corpus(src.corpus, src.build, field=f"data.train.{i}.build")


def build_corpus(corpus: str, build: CorpusBuild, field: str = "build") -> None:
    from tunelab.data.corpus.chunks import ReadSettings
    from tunelab.data.corpus.prepare import format_summary, prepare_corpus
    settings = ReadSettings(text_field=build.text_field, val_fraction=build.val_fraction, seed=build.seed,
                            cleaning=_cleaning(build, field))
    inputs = list(build.inputs)
    if build.encyclopedia is not None:
        inputs.append(str(_encyclopedia(build)))
    if isinstance(build.tokenizer, str):
        tokenizer = build.tokenizer
    else:
        tokenizer = build.tokenizer.out
        if not (Path(tokenizer) / "tokenizer.json").is_file():
            from tunelab.model.tokenizer import tokenizer_summary, train_tokenizer_dir
            log.info(f"training a {build.tokenizer.vocab_size}-token BPE tokenizer into {tokenizer}")
            report = train_tokenizer_dir(inputs, build.tokenizer.vocab_size, tokenizer, settings)
            log.info("\n".join(tokenizer_summary(report)))
    log.info(f"preparing corpus {corpus} (blocks of {build.block_size} tokens)")
    meta = prepare_corpus(inputs, tokenizer, build.block_size, corpus, settings)
    log.info(format_summary(meta))


def _encyclopedia(build: CorpusBuild) -> Path:
    """The generated articles file, written first if missing."""
    enc = build.encyclopedia
    articles = Path(enc.out) / "articles.jsonl"
    if not articles.is_file():
        from tunelab.data.synthetic.encyclopedia import generate_articles, write_encyclopedia
        log.info(f"generating {enc.count} encyclopedia articles (seed {enc.seed}) into {enc.out}")
        write_encyclopedia(enc.out, *generate_articles(enc.count, enc.seed, noise=enc.noise))
    return articles


def _cleaning(build: CorpusBuild, field: str):
    from tunelab.data.corpus.clean import CleaningConfig
    known = {f.name for f in fields(CleaningConfig)}
    unknown = sorted(set(build.cleaning) - known)
    if unknown:
        raise TunelabError(f"unknown cleaning rule(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                           field=f"{field}.cleaning")
    return CleaningConfig(**build.cleaning)


def _wait_for(corpus: Path) -> None:
    from tunelab.data.corpus.store import is_corpus_dir
    deadline = time.monotonic() + _WAIT_SECONDS
    while not is_corpus_dir(corpus):
        if time.monotonic() > deadline:
            raise TunelabError("rank 0 did not finish building the corpus", file=corpus)
        time.sleep(2)
