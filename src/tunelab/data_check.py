"""`tunelab data check RECIPE`: see what the model will be trained on before spending compute on it.

A verb above the stages it combines (the recipe's training data, its tokenizer, packing), so `data/` needs
nothing of `model/`."""

from __future__ import annotations

import statistics
from pathlib import Path

from tunelab.data.packing import (IGNORE, encode_examples, pack_examples, packing_efficiency, shared_prefix,
                                  unpacked_rows)
from tunelab.data.sources import training_examples
from tunelab.data.templates import PromptTemplate
from tunelab.recipe import Recipe


def render_marked(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The sample's text with loss-carrying tokens wrapped in ⟦…⟧."""
    out, span, in_loss = [], [], False
    for tid, lab in zip(input_ids, labels):
        carries = lab != IGNORE
        if carries != in_loss and span:
            text = tokenizer.decode(span)
            out.append(f"⟦{text}⟧" if in_loss else text)
            span = []
        in_loss = carries
        span.append(tid)
    if span:
        text = tokenizer.decode(span)
        out.append(f"⟦{text}⟧" if in_loss else text)
    return "".join(out)


def _tokenizer_for(recipe: Recipe, examples, template):
    """The recipe's tokenizer, or (from scratch) one trained on a sample of the data as training would."""
    from tunelab.model.loading import load_tokenizer, quiet_transformers
    quiet_transformers()
    m = recipe.model
    if m.tokenizer or not m.from_scratch:
        from tunelab.runs import is_run_dir, pick_checkpoint
        path = m.tokenizer or m.path
        if not m.tokenizer and is_run_dir(path):   # as training resolves it: the run's best checkpoint
            path = str(pick_checkpoint(Path(path)))
        return load_tokenizer(path)
    from tunelab.model.tokenizer import train_bpe_tokenizer
    sample = examples[:20000]
    return train_bpe_tokenizer((template.render(e.instruction, e.input) + e.output for e in sample),
                               m.tokenizer_vocab_size)


def _collapsed_answer_tokens(recipe: Recipe, encoded, tokenizer) -> list | None:
    """The answer tokens whose output rows the base never learned (`tunelab.model.untrained_tokens`), read from
    the base's weight files alone; None where there is no base to read (from scratch, a run directory)."""
    from tunelab.model.untrained_tokens import answer_token_counts, find_collapsed, head_weight_from_files
    m = recipe.model
    if m.from_scratch or not m.path or not recipe.lora.enabled or not Path(m.path).is_dir():
        return None
    head = head_weight_from_files(m.path)
    return None if head is None else find_collapsed(head, answer_token_counts(encoded), tokenizer)


def check(recipe: Recipe, n_samples: int = 3) -> dict:
    template = PromptTemplate(recipe.data.template, recipe.data.instruction_prefix, recipe.data.cot)
    examples = training_examples(recipe)
    tokenizer = _tokenizer_for(recipe, examples, template)
    max_len = recipe.data.max_seq_len
    encoded = encode_examples(tokenizer, template, examples, max_len, recipe.data.loss_on)
    lengths = [len(e.input_ids) for e in encoded]
    loss_tokens = [sum(1 for x in e.labels if x != IGNORE) for e in encoded]
    replayed = []
    if recipe.data.replay is not None:  # the corpus blocks training mixes in, as the trainer draws them
        from tunelab.train.corpus_rows import replay_for
        replayed = replay_for(recipe, tokenizer, encoded)
    prefix = shared_prefix(encoded + replayed) if recipe.data.packing and recipe.data.share_prefix else 0
    rows = (pack_examples(encoded + replayed, max_len, prefix=prefix) if recipe.data.packing
            else unpacked_rows(encoded + replayed))
    return {
        "examples": examples, "encoded": encoded, "tokenizer": tokenizer, "samples": n_samples,
        "collapsed": _collapsed_answer_tokens(recipe, encoded, tokenizer),
        "count": len(encoded), "truncated": sum(e.truncated for e in encoded),
        "length": {"min": min(lengths), "mean": statistics.fmean(lengths), "median": statistics.median(lengths),
                   "max": max(lengths), "p95": sorted(lengths)[int(0.95 * (len(lengths) - 1))]},
        "loss_tokens_mean": statistics.fmean(loss_tokens),
        "replay": {"blocks": len(replayed), "tokens": sum(len(b.input_ids) for b in replayed),
                   "samples": replayed},
        "rows": len(rows), "packing_efficiency": packing_efficiency(rows, max_len), "shared_prefix": prefix,
        "padded_efficiency": statistics.fmean(lengths) / max_len,
    }
