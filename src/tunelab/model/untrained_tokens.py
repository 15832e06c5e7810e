"""Answer tokens whose output rows the base never learned: found before training, so LoRA is not asked to do
what it cannot.

Why this happens. A token a model never had to predict in pretraining gets only one kind of gradient on its
output row: the softmax pushing its probability down, −p·h for hidden state h. That push is the same for every
such token, so their rows all drift along one direction and end up pointing the same way. `models/tiny-base`
never wrote a decimal: 1,615 of its 1,724 output rows, "." among them, have cosine > 0.99 with one another.
Those tokens have one logit up to a scale; LoRA on attention and MLP layers moves the hidden state, which
raises or lowers the whole cluster together, so it cannot make "." likely without making 1,614 other tokens
likely too. Fine-tuned on decimals, the quickstart's p(".") at a decimal point stays near 0.014: greedy decoding
picks it by a hair, sampling at temperature 1 almost never does (and GRPO, pass@k and the arena all sample).

What is checked. An answer token is *collapsed* when its output row is (near) zero, or when at least
`min_neighbours` other rows point the same way (cosine ≥ `threshold`). Rows a model learned are far apart
(tiny-base's digits: cosine ≈ 0.2–0.3 with the cluster). Zero rows are the other signature of a never-trained
token (Llama-3's reserved tokens; unsloth's `fix_untrained_tokens` looks for those by magnitude).

A row near a cluster is not proof by itself: SmolLM2-Instruct's `<|im_end|>` row has cosine 0.990 with the 17 rows
of its never-used special tokens, yet the model ends its answers with it (p 0.5-0.8 where an answer ends), because
its hidden state there is long enough that a 1 % difference in direction is a wide gap in logits. So where the model
is at hand, a flagged token is kept only if the base also fails to predict it where the data has it
(`emitted_probability`: the median probability at those positions, below `EMITTED`) and, for a token that ends
answers (the tokenizer's EOS, the chat template's end of turn), where the base's *own* answers end
(`tunelab.decoding.answer_ends`; the callers measure it, as generating is the decoding core's, a stage above
this one). The data alone cannot clear an end token: after a pirate's "Arr, ahoy!" SmolLM2 gives `<|im_end|>`
p 0.0003, where no turn of its own would have ended, though it ends every one of its own with it.

The fix is peft's `trainable_token_indices`: those rows of the output head (of the embeddings, for a model that
ties them) are trained beside the LoRA adapter, hidden-size parameters a token, counted in the low-parameter
ratio like any trainable parameter (`lora.trainable_tokens` in a recipe).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

THRESHOLD = 0.99
MIN_NEIGHBOURS = 8
EMITTED = 0.05  # a base that gives a token this median probability where the data has it has learned to emit it


@dataclass(frozen=True)
class CollapsedToken:
    """An answer token whose output row the model never learned."""

    token_id: int
    text: str
    count: int  # how many answer tokens of the data are this token
    share: float  # count / all answer tokens
    neighbours: int  # other output rows pointing the same way (cosine >= threshold); -1: a zero row


def collapsed_rows(head: torch.Tensor, token_ids: list[int], threshold: float = THRESHOLD,
                   min_neighbours: int = MIN_NEIGHBOURS, chunk: int = 256) -> dict[int, int]:
    """{token id: its neighbour count (-1 for a zero row)} for those of `token_ids` whose row of `head`
    (vocab × hidden) is collapsed. Costs one vocab × len(token_ids) product, in chunks: about a second for a
    128k-token vocabulary and a few hundred distinct answer tokens."""
    weight = head.detach().float()
    norms = weight.norm(dim=1)
    scale = float(norms.max()) if norms.numel() else 0.0
    unit = weight / norms.clamp_min(1e-12).unsqueeze(1)
    out: dict[int, int] = {}
    ids = [i for i in dict.fromkeys(token_ids) if 0 <= i < weight.shape[0]]
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        cos = unit @ unit[part].T  # vocab × part
        near = (cos >= threshold).sum(dim=0) - 1  # the row itself is always near
        for j, tid in enumerate(part):
            if norms[tid] <= 1e-6 * max(scale, 1e-12):
                out[tid] = -1
            elif int(near[j]) >= min_neighbours:
                out[tid] = int(near[j])
    return out


def answer_token_counts(encoded, ignore: int = -100) -> Counter:
    """How often each token id is an answer (loss-carrying) token in encoded examples."""
    counts: Counter = Counter()
    for example in encoded:
        counts.update(t for t in example.labels if t != ignore)
    return counts


def find_collapsed(head: torch.Tensor, counts: Counter, tokenizer) -> list[CollapsedToken]:
    """The answer tokens of `counts` whose rows of `head` are collapsed, most used first."""
    total = sum(counts.values()) or 1
    found = collapsed_rows(head, list(counts))
    return sorted((CollapsedToken(tid, tokenizer.decode([tid]), counts[tid], counts[tid] / total, n)
                   for tid, n in found.items()), key=lambda t: (-t.count, t.token_id))


def emitted_probability(model, encoded, token_ids, samples: int = 16, ignore: int = -100) -> dict[int, float]:
    """{token id: the median probability `model` gives it at the positions where the first `samples` encoded
    examples holding it have it as an answer token}: whether the base already emits it, its row's geometry aside.
    The tokens share their examples (the digits of arithmetic answers are in nearly every one): each example runs
    through the model once for all the tokens it is a sample of, not once a token."""
    import statistics

    import torch
    device = next(model.parameters()).device
    tokens = list(dict.fromkeys(token_ids))
    sample_of: dict[int, list[int]] = {}  # example index -> the tokens it is one of the first `samples` holding
    for tid in tokens:
        for index in [i for i, e in enumerate(encoded) if tid in e.labels][:samples]:
            sample_of.setdefault(index, []).append(tid)
    probs: dict[int, list[float]] = {tid: [] for tid in tokens}
    from tunelab.model.eval_mode import eval_mode
    with eval_mode(model):  # no dropout: nothing drawn from the run's random state
        for index in sorted(sample_of):
            example = encoded[index]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([example.input_ids], device=device)).logits[0]
            for tid in sample_of[index]:
                at = [i - 1 for i, label in enumerate(example.labels) if label == tid and label != ignore and i > 0]
                probs[tid] += torch.softmax(logits[at].float(), -1)[:, tid].tolist()
    return {tid: statistics.median(p) if p else 0.0 for tid, p in probs.items()}


def split_learned(model, collapsed: list[CollapsedToken], encoded, ends: dict[int, float] | None = None
                  ) -> tuple[list[CollapsedToken], list[tuple]]:
    """`collapsed` parted by what `model` predicts: (those it fails to emit, [(token, its probability, where)] for
    those it emits anyway, learned whatever their rows look like). A token is emitted where the data has it, or
    for an end token in `ends` ({id: the probability the base gives it where its own answers end,
    `tunelab.decoding.answer_ends.own_answer_end_probability`}) where its own answers end. What a run and
    `data check` both decide with."""
    if not collapsed or not encoded:
        return collapsed, []
    at_data = emitted_probability(model, encoded, [t.token_id for t in collapsed])
    ends = ends or {}
    judged = {t.token_id: max((at_data[t.token_id], "where the data has it"),
                              (ends.get(t.token_id, 0.0), "where its own answers end")) for t in collapsed}
    return ([t for t in collapsed if judged[t.token_id][0] < EMITTED],
            [(t, *judged[t.token_id]) for t in collapsed if judged[t.token_id][0] >= EMITTED])


def learned_note(learned: list[tuple]) -> str:
    """"'<|im_end|>' has an output row like 18 others but the base gives it p 0.64 where its own answers end:
    learned"."""
    return "; ".join(f"{t.text!r} has an output row like {t.neighbours:,} others but the base gives it p {p:.2f} "
                     f"{where}: learned" for t, p, where in learned)


def describe(tokens: list[CollapsedToken], limit: int = 8) -> str:
    """'".": 1,234 (8.1 % of answer tokens, 1,615 rows alike), ...' for a log line or an error."""
    parts = []
    for t in tokens[:limit]:
        alike = "a zero row" if t.neighbours < 0 else f"{t.neighbours:,} rows alike"
        parts.append(f"{t.text!r}: {t.count:,} ({100 * t.share:.1f} % of answer tokens, {alike})")
    more = f", and {len(tokens) - limit} more" if len(tokens) > limit else ""
    return "; ".join(parts) + more


def head_weight(model) -> torch.Tensor:
    """The output head's weight (vocab × hidden) of a loaded model; for tied embeddings, the embeddings."""
    return model.get_output_embeddings().weight


def head_module_name(model) -> str:
    """The module whose rows peft's `trainable_token_indices` trains: the output head, or the input embeddings
    when the model ties the two (peft then keeps the head tied to them)."""
    target = model.get_input_embeddings() if tied_embeddings(model) else model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is target:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(model).__name__} has no output head module")


def tied_embeddings(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def head_weight_from_files(model_dir: str | Path) -> torch.Tensor | None:
    """The output head's weight read from a model directory's safetensors files alone (no model is built: a
    `data check` of an 8B recipe reads one tensor), or None where the files do not hold one that can be found."""
    from safetensors import safe_open

    from tunelab.model.weight_files import weight_files
    files = weight_files(model_dir)
    found = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith("lm_head.weight") or key.endswith("embed_tokens.weight"):
                    found[key.rsplit(".", 2)[-2]] = (path, key)
    choice = found.get("lm_head") or found.get("embed_tokens")  # a tied model saves the embeddings only
    if choice is None:
        return None
    path, key = choice
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)
