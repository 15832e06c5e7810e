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
from tunelab.runs import is_run_dir, pick_checkpoint

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
    """A `model.path` naming a run directory: replaced by the path of that run's best checkpoint (what serve
    and eval load for it too); returns the run directory, or None when the path is a model itself. A MindFormers
    .ckpt is replaced by its converted HF directory (converted once, cached), and so is a GGUF file (dequantised)."""
    from tunelab.convert.gguf_import import hf_dir_for_gguf, is_gguf
    if is_gguf(recipe.model.path) and int(os.environ.get("RANK", "0")) == 0:
        recipe.model = recipe.model.model_copy(update={"path": str(hf_dir_for_gguf(recipe.model.path))})
        return None
    if recipe.model.path and recipe.model.path.endswith(".ckpt"):
        from tunelab.convert.mindformers import hf_dir_for_ckpt
        m = recipe.model
        converted = hf_dir_for_ckpt(m.path, m.mindformers_config, m.tokenizer)
        recipe.model = m.model_copy(update={"path": str(converted), "mindformers_config": None})
        return None
    path = Path(recipe.model.path) if recipe.model.path else None
    if path is None or not is_run_dir(path):
        return None
    recipe.model.path = str(pick_checkpoint(path))
    return path
