"""Tokenise examples with answer-only labels, and pack short samples into shared rows.

Packed samples never attend to each other: position ids restart at 0 for every sample, and with
`attention_mask=None` transformers builds a block-diagonal causal mask from them. ~30-token arithmetic
samples then fill a 256-token row instead of wasting it on padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.data.examples import Example
from tunelab.data.templates import PromptTemplate

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class Row:
    """One training row: one or more samples laid end to end."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, enc: Encoded) -> None:
        self.input_ids += enc.input_ids
        self.labels += enc.labels
        self.position_ids += range(len(enc.input_ids))


def encode_examples(tokenizer, template: PromptTemplate, examples: list[Example], max_len: int,
                    loss_on: str = "answer") -> list[Encoded]:
    """Prompt and response are tokenised separately so the label boundary is exact; EOS ends the response.

    Tokenising the whole list in two calls lets the fast tokenizer work in batches.
    """
    if not examples:
        return []
    prompts = tokenizer([template.render(ex.instruction, ex.input) for ex in examples],
                        add_special_tokens=False)["input_ids"]
    answers = tokenizer([ex.output for ex in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt, answer in zip(prompts, answers):
        answer = answer + [eos]
        ids = prompt + answer
        labels = ([IGNORE] * len(prompt) if loss_on == "answer" else list(prompt)) + answer
        truncated = len(ids) > max_len
        if truncated:
            # Keep the answer where possible: cut the prompt's start, not the response.
            ids, labels = ids[-max_len:], labels[-max_len:]
        labels[0] = IGNORE  # nothing predicts a sample's first token (in a packed row: the previous sample's EOS)
        out.append(Encoded(ids, labels, truncated))
    return out


def pack_examples(encoded: list[Encoded], max_len: int, open_rows: int = 8) -> list[Row]:
    """Pack samples into rows of at most `max_len` tokens, first-fit over a few open rows.

    Deterministic for a given input order; a row is closed when it is the oldest of too many open rows.
    With `open_rows=1` it is plain sequential greedy packing.
    """
    done: list[Row] = []
    opened: list[Row] = []
    for enc in encoded:
        n = len(enc.input_ids)
        for row in opened:
            if len(row.input_ids) + n <= max_len:
                row.add(enc)
                break
        else:
            row = Row()
            row.add(enc)
            opened.append(row)
            if len(opened) > open_rows:
                done.append(opened.pop(0))
    return done + opened


def unpacked_rows(encoded: list[Encoded]) -> list[Row]:
    """One sample per row (packing off)."""
    rows = []
    for enc in encoded:
        row = Row()
        row.add(enc)
        rows.append(row)
    return rows


def packing_efficiency(rows: list[Row], max_len: int) -> float:
    """Fraction of a full `max_len` grid that holds real tokens."""
    return sum(len(r.input_ids) for r in rows) / (len(rows) * max_len) if rows else 0.0


def collate_rows(rows: list[Row], pad_id: int, packed: bool):
    """Stack rows into tensors, padding on the right to the longest row.

    Packed: returns position_ids and no attention mask (the block-diagonal mask comes from positions);
    padding forms its own block with labels ignored. Unpacked: a normal attention mask.
    """
    import torch
    width = max(len(r.input_ids) for r in rows)
    ids, labels, pos, mask = [], [], [], []
    for r in rows:
        pad = width - len(r.input_ids)
        ids.append(r.input_ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE] * pad)
        pos.append(r.position_ids + list(range(pad)))
        mask.append([1] * len(r.input_ids) + [0] * pad)
    batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if packed:
        batch["position_ids"] = torch.tensor(pos)
    else:
        batch["attention_mask"] = torch.tensor(mask)
    return batch
