"""`tunelab predict` (`predict`): the GLUE exam's hand-in file — the first N dev predictions, one 0/1 label
a line.

    tunelab predict --model runs/gemma-2b-glue-lora --task CoLA --data pre_data/CoLA/CoLA_dev.json \\
        [--limit 150] [--mode generate|loglik] [--out result_{task}.txt]

`--model` is a model or adapter directory, a hub id, or a run directory (its best checkpoint by
metrics.json, else the last). `--data` is a GLUE TSV (dev.tsv, test.tsv; labels not needed) or a pre_data
JSON (`{task}_dev.json`); its first `--limit` examples, in file order, are predicted (`--limit 0`: all).

Modes:

* `generate` (default): the batched greedy engine writes an answer, the strict parser of
  `tunelab.tasks.glue.parse_label` reads it. An answer it cannot read is *unparsed*: it is counted and
  reported on stderr, its line gets the task's majority label in GLUE's training data (CoLA 1 =
  acceptable, 70 %; QQP 0 = not duplicate, 63 %) so the file keeps one 0/1 per line, and the side file
  `<out stem>.details.json` lists every such line with the raw generation. `--strict` makes any unparsed
  answer an error instead (no file is written).
* `loglik`: the two label words (default "0", "1"; `--label-words no,yes`) are scored as continuations of
  the prompt and the likelier one is written — no parser, so nothing can be unparsed.

The details file also records the model, mode, counts per label and, when the data file is labelled, the
accuracy with unparsed answers counted wrong (as `tunelab grade glue` would count them) next to the
accuracy of the file as written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.glue import canonical_task
from tunelab.errors import TunelabError
from tunelab.records import write_json

MAJORITY = {"CoLA": 1, "QQP": 0}


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict_labels(model, tokenizer, template, task, examples, mode: str, batch_size: int,
                   max_new_tokens: int) -> tuple[list[int | None], list[str]]:
    """(label or None per example, raw generation or the chosen word per example)."""
    from tunelab.tasks.glue import parse_label
    prompts = [task.prompt(ex, template) for ex in examples]
    if mode == "generate":
        from tunelab.decoding.embedded import generate_batched
        texts = generate_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 desc=f"predict {task.glue_name}")
        return [parse_label(t, task.glue_name) for t in texts], texts
    from tunelab.metrics.loglik import loglikelihood
    words = task.words()
    requests = [req for ex, p in zip(examples, prompts) for req in task.loglik_requests(ex, p)]
    scores = loglikelihood(model, tokenizer, requests, batch_size=batch_size, progress=True,
                           desc=f"predict {task.glue_name}")
    labels = [task.predict_loglik(scores[2 * i: 2 * i + 2]) for i in range(len(examples))]
    return labels, [words[label] for label in labels]


@dataclass
class Predictions:
    """What `predict` wrote: the labels as written (one per line of `out`) and the details beside them."""
    out: Path
    details_path: Path
    labels: list[int]
    details: dict = field(default_factory=dict)


def predict(model: str | Path, task: str, data: str | Path, out: str | Path = "result_{task}.txt", *,
            limit: int | None = 150, mode: str = "generate", label_words: str | None = None, strict: bool = False,
            batch_size: int = 32, max_new_tokens: int = 8, device: str | None = None,
            precision: str = "auto") -> Predictions:
    """Write the GLUE hand-in file `out` (`{task}` in it replaced by the task's name; `limit` 0 or None: every
    example of `data`) and its details file, as the module docstring describes; `strict`: an unparsed answer is
    an error and nothing is written."""
    from tunelab.eval.runner import load_model, template_for
    from tunelab.convert.resolve_model import resolve_model
    from tunelab.tasks.glue import parse_label, read_glue_examples
    from tunelab.tasks.registry import get_task

    name = canonical_task(task)
    glue_task = get_task(name.lower())
    if label_words:
        glue_task.configure(label_words=label_words)
        glue_task.words()
    if limit is not None and limit < 0:
        raise TunelabError(f"must be 0 (all) or positive, got {limit}", field="limit")
    examples = read_glue_examples(data, name, require_labels=False)
    if limit:
        examples = examples[:limit]
    out = Path(str(out).replace("{task}", name))
    details_path = out.with_name(out.stem + ".details.json")
    model_dir = resolve_model(model, field="model").path   # a run's best checkpoint, a GGUF file's conversion, …

    loaded, tokenizer = load_model(model_dir, device, precision)
    template = template_for(model_dir, tokenizer=tokenizer)
    labels, raw = predict_labels(loaded, tokenizer, template, glue_task, examples, mode, batch_size, max_new_tokens)
    unparsed = [i for i, label in enumerate(labels) if label is None]
    if unparsed and strict:
        shown = ", ".join(f"line {i + 1}: {raw[i][:40]!r}" for i in unparsed[:5])
        raise TunelabError(f"{len(unparsed)} of {len(labels)} generations are not a {name} label ({shown}"
                           f"{', …' if len(unparsed) > 5 else ''}); nothing written (without strict, those lines "
                           f"get the majority label {MAJORITY[name]}; or use mode loglik, which parses nothing)",
                           field="strict")
    written = [MAJORITY[name] if label is None else label for label in labels]
    details = {"task": name, "model": str(model_dir), "data": str(data), "mode": mode, "n": len(written),
               "label_words": glue_task.words() if mode == "loglik" else None,
               "unparsed": len(unparsed), "unparsed_written_as": MAJORITY[name] if unparsed else None,
               "counts": {"0": written.count(0), "1": written.count(1)},
               "unparsed_lines": [{"line": i + 1, "id": examples[i].id, "generation": raw[i]} for i in unparsed]}
    golds = [parse_label(ex.output, name) if ex.output.strip() else None for ex in examples]
    if golds and all(g is not None for g in golds):
        details["accuracy_unparsed_wrong"] = sum(p == g for p, g in zip(labels, golds)) / len(golds)
        details["accuracy_as_written"] = sum(p == g for p, g in zip(written, golds)) / len(golds)
    _write_lines(out, [str(label) for label in written])
    write_json(details_path, details)
    return Predictions(out, details_path, written, details)
