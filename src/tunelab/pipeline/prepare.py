"""What `tunelab run` and `tunelab train` do before training: build the recipe's corpora, split an encyclopedia
corpus's QA pairs for the fine-tuning that follows it, and turn `model.path` into a model directory.

A `model.path` naming a run directory becomes that run's best checkpoint (the course path starts from a
pretraining run this way), and `resolve_base_run` hands the run directory back so the run can tell which kind it
is (`tunelab.pipeline.kinds`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tunelab.recipe import Recipe

log = logging.getLogger(__name__)


def prepare_inputs(recipe: Recipe) -> Path | None:
    """What `run` and `train` need before training: the recipe's corpora built, an encyclopedia corpus's QA
    pairs split for fine-tuning, and model.path resolved (a run directory, a .ckpt); returns the base run
    directory, if model.path named one."""
    from tunelab.pipeline.build_corpus import build_corpora
    build_corpora(recipe)
    split_sft_qa(recipe)
    base_run = resolve_base_run(recipe)
    if recipe.data.replay is not None:
        from tunelab.pipeline.competition import original_base
        from tunelab.pipeline.self_replay import prepare_self_replay
        prepare_self_replay(recipe, original_base(recipe) or recipe.model.path)
    return base_run


def split_sft_qa(recipe: Recipe) -> Path | None:
    """For a corpus built from generated encyclopedia articles: their QA pairs split by the corpus's document
    split into `sft-qa/{train,val}.jsonl` beside the articles folder (once; kept when present), what the
    fine-tuning recipes read. Returns the folder, or None for other runs."""
    src = recipe.data.train[0]
    if (src.corpus is None or src.replay is not None or src.build is None or src.build.encyclopedia is None
            or int(os.environ.get("RANK", "0")) != 0):
        return None
    articles = Path(src.build.encyclopedia.out)
    out = articles.parent / "sft-qa"
    if not (out / "summary.json").is_file():
        from tunelab.data.synthetic.qa_split import split_qa_by_corpus
        s = split_qa_by_corpus([articles / "qa.jsonl"], src.corpus, out)
        log.info(f"QA pairs for fine-tuning: {s['train']:,} -> {out}/train.jsonl; held out: {s['val']:,} -> "
                 f"{out}/val.jsonl ({out}/summary.json has the counts)")
    return out


def resolve_base_run(recipe: Recipe) -> Path | None:
    """`model.path` made loadable by `tunelab.convert.resolve_model`, in place: a run directory becomes the path
    of its best checkpoint (what serve and eval load for it too) and is returned, so the run can tell which
    kind it is; a checkpoint directory becomes its model (or adapter) directory; a MindFormers .ckpt or a GGUF
    file becomes its converted HF directory (converted once, cached). Returns None when the path is no run.

    Under torchrun every rank resolves the same path: rank 0 converts, the others wait for the directory it
    writes (the cache key is the source files', so they name the same one) instead of converting too."""
    m = recipe.model
    if not m.path:
        return None
    from tunelab.convert.resolve_model import resolve_model
    resolved = resolve_model(m.path, mindformers_config=m.mindformers_config, tokenizer=m.tokenizer,
                             convert=int(os.environ.get("RANK", "0")) == 0)
    if resolved.converted:
        recipe.model = m.model_copy(update={"path": resolved.path, "mindformers_config": None})
        return None
    recipe.model.path = resolved.path   # a run's or a checkpoint's model (or adapter) directory; else the same
    return resolved.run
