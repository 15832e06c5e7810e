"""`tunelab data check RECIPE`: see what the model will be trained on before spending compute on it.

A verb above the stages it combines (the recipe's training data, its tokenizer, packing), so `data/` needs
nothing of `model/`."""

from __future__ import annotations

import statistics
from pathlib import Path

from tunelab.data.packing import (IGNORE, encode_examples, pack_examples, packing_efficiency, shared_prefix,
                                  unpacked_rows)
from tunelab.data.sources import training_examples
from tunelab.data.templates import recipe_template, tokenizer_speaking
from tunelab.recipe import Recipe

ASK_BASE_BYTES = 2 << 30  # a base this size or smaller is loaded to ask it about flagged rows (fp32 135M: 0.5 GB)


def render_marked(tokenizer, input_ids: list[int], labels: list[int], marks: tuple[str, str] = ("⟦", "⟧")) -> str:
    """The sample's text with loss-carrying tokens wrapped in `marks` (⟦…⟧; `[[`, `]]` or a terminal colour)."""
    out, span, in_loss = [], [], False
    for tid, lab in zip(input_ids, labels):
        carries = lab != IGNORE
        if carries != in_loss and span:
            text = tokenizer.decode(span)
            out.append(f"{marks[0]}{text}{marks[1]}" if in_loss else text)
            span = []
        in_loss = carries
        span.append(tid)
    if span:
        text = tokenizer.decode(span)
        out.append(f"{marks[0]}{text}{marks[1]}" if in_loss else text)
    return "".join(out)


def _tokenizer_for(recipe: Recipe, examples, template):
    """The recipe's tokenizer, or (from scratch) one trained on a sample of the data as training would."""
    from tunelab.model.loading import load_tokenizer, quiet_transformers
    quiet_transformers()
    m = recipe.model
    if m.tokenizer and any((Path(m.tokenizer) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return load_tokenizer(m.tokenizer)   # a tokenizer's own directory
    if m.tokenizer or not m.from_scratch:
        return load_tokenizer(str(_model_dir(recipe, m.tokenizer or m.path)))
    from tunelab.model.tokenizer import train_bpe_tokenizer
    sample = examples[:20000]
    plain = template.resolve(None)  # no tokenizer yet: `auto` is alpaca
    return train_bpe_tokenizer((plain.render(e.instruction, e.input) + e.output for e in sample),
                               m.tokenizer_vocab_size)


def _model_dir(recipe: Recipe, path: str) -> str:
    """Where `path` loads from, as training resolves it (`tunelab.convert.resolve_model`): a run's best
    checkpoint, a checkpoint's model, a GGUF file's or a MindFormers .ckpt's converted directory, or the path
    itself (an adapter: its own directory, whose tokenizer it saved)."""
    from tunelab.convert.resolve_model import resolve_model
    m = recipe.model
    return resolve_model(path, mindformers_config=m.mindformers_config, tokenizer=m.tokenizer).path


def _template_and_tokenizer(recipe: Recipe, examples):
    """The recipe's tokenizer and its template resolved for the base (`auto`: the base's own chat template when
    it has one), as training makes them."""
    template = recipe_template(recipe.data)
    tokenizer = _tokenizer_for(recipe, examples, template)
    base = _model_dir(recipe, recipe.model.path) if recipe.model.path and not recipe.model.from_scratch else None
    template = template.resolve(tokenizer, base)
    # as training saves it: the template the base is asked to end its own answers in
    tokenizer = tokenizer_speaking(template, tokenizer)
    return template.bind(tokenizer), tokenizer


def show(recipe: Recipe, n: int = 3) -> tuple[list, list, object, object]:
    """The first `n` training examples as the model sees them: (examples, their `Encoded` ids and labels, the
    tokenizer, the resolved template). What `tunelab data show` prints."""
    prepare_replay(recipe)
    everything = training_examples(recipe)
    replayed = [ex for ex in everything if ex.meta.get("replay")]
    examples = [ex for ex in everything if not ex.meta.get("replay")][:n] + replayed[:1]  # one replayed, marked
    template, tokenizer = _template_and_tokenizer(recipe, examples)
    encoded = encode_examples(tokenizer, template, examples, recipe.data.max_seq_len, recipe.data.loss_on)
    return examples, encoded, tokenizer, template


def _collapsed_answer_tokens(recipe: Recipe, encoded, tokenizer) -> tuple[list | None, list]:
    """(the answer tokens whose output rows the base never learned, [(token, p, where)] for those whose rows look
    never-learned but that the base emits anyway) as a run judges them (`tunelab.model.untrained_tokens`): rows
    read from the base's weight files, and only where some are flagged, the base loaded to ask whether it emits
    them where the data has them or, for its end tokens, where its own answers end (a base over `ASK_BASE_BYTES`
    is not loaded: an 8B recipe's check stays a one-tensor read, and its run still asks). (None, []) where there
    is no base to read (from scratch, no LoRA)."""
    from tunelab.model.untrained_tokens import answer_token_counts, find_collapsed, head_weight_from_files, split_learned
    m = recipe.model
    if m.from_scratch or not m.path or not recipe.lora.enabled:
        return None, []
    base = Path(_model_dir(recipe, m.path))
    head = head_weight_from_files(base) if base.is_dir() else None
    if head is None:
        return None, []
    collapsed = find_collapsed(head, answer_token_counts(encoded), tokenizer)
    if not collapsed or _weight_bytes(base) > ASK_BASE_BYTES:
        return collapsed, []
    from tunelab.decoding.answer_ends import own_answer_end_probability
    from tunelab.model.loading import load_pretrained
    model = load_pretrained(str(base))
    ends = own_answer_end_probability(model, tokenizer, [t.token_id for t in collapsed])
    return split_learned(model, collapsed, encoded, ends)


def _weight_bytes(model_dir: Path) -> int:
    from tunelab.model.weight_files import weight_files
    return sum(f.stat().st_size for f in weight_files(model_dir))


def prepare_replay(recipe: Recipe) -> None:
    """`data.replay: self`'s examples, prepared as a run prepares them (the base's answers, cached)."""
    if recipe.data.replay is not None and recipe.data.replay.file is None:
        from tunelab.pipeline.self_replay import prepare_self_replay
        prepare_self_replay(recipe, str(_model_dir(recipe, recipe.model.path)) if recipe.model.path else None)


def check(recipe: Recipe, n_samples: int = 3) -> dict:
    prepare_replay(recipe)
    examples = training_examples(recipe)
    template, tokenizer = _template_and_tokenizer(recipe, examples)
    max_len = recipe.data.max_seq_len
    encoded = encode_examples(tokenizer, template, examples, max_len, recipe.data.loss_on)
    lengths = [len(e.input_ids) for e in encoded]
    loss_tokens = [sum(1 for x in e.labels if x != IGNORE) for e in encoded]
    replayed = []
    if recipe.data.replay_corpus is not None:  # the corpus blocks training mixes in, as the trainer draws them
        from tunelab.train.corpus_rows import replay_for
        replayed = replay_for(recipe, tokenizer, encoded)
    prefix = shared_prefix(encoded + replayed) if recipe.data.packing and recipe.data.share_prefix else 0
    rows = (pack_examples(encoded + replayed, max_len, prefix=prefix) if recipe.data.packing
            else unpacked_rows(encoded + replayed))
    collapsed, learned = _collapsed_answer_tokens(recipe, encoded, tokenizer)
    return {
        "examples": examples, "encoded": encoded, "tokenizer": tokenizer, "samples": n_samples,
        "template": template.name, "collapsed": collapsed, "learned": learned,
        "count": len(encoded), "truncated": sum(e.truncated for e in encoded),
        "length": {"min": min(lengths), "mean": statistics.fmean(lengths), "median": statistics.median(lengths),
                   "max": max(lengths), "p95": sorted(lengths)[int(0.95 * (len(lengths) - 1))]},
        "loss_tokens_mean": statistics.fmean(loss_tokens),
        "replay": {"blocks": len(replayed), "tokens": sum(len(b.input_ids) for b in replayed),
                   "samples": replayed},
        "rows": len(rows), "packing_efficiency": packing_efficiency(rows, max_len), "shared_prefix": prefix,
        "padded_efficiency": statistics.fmean(lengths) / max_len,
    }
