"""The training rows of a preference run (`train.method: dpo`): one preference pair a row, the chosen and the
rejected answer each encoded as fine-tuning encodes a sample (`tunelab.data.preferences.pair_examples`), in
the same deterministic epoch-after-epoch order as `row_stream.RowStream`, so a resumed run picks up on exactly
the pairs it would have had. Pairs are not packed: the two answers of a pair are compared whole."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.packing import Encoded, encode_examples
from tunelab.data.templates import PromptTemplate
from tunelab.train.row_stream import ShuffledRows


@dataclass
class PairRow:
    chosen: Encoded
    rejected: Encoded

    @property
    def input_ids(self) -> list[int]:
        """Both rows' tokens (what the loop counts as the step's tokens)."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def sample_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def pair_rows(recipe, tokenizer, template: PromptTemplate) -> tuple[ShuffledRows, int, int]:
    """(the stream, how many pairs, how many had a prompt cut to fit data.max_seq_len)."""
    rows, truncated = _encoded_pairs(recipe.data.train, "data.train", recipe, tokenizer, template)
    return ShuffledRows(rows, recipe.seed), len(rows), truncated


def held_out_pair_rows(recipe, tokenizer, template: PromptTemplate) -> list[PairRow] | None:
    """The held-out pairs of `data.val`, encoded as the training pairs are; None when there are none."""
    if not recipe.data.val:
        return None
    return _encoded_pairs(recipe.data.val, "data.val", recipe, tokenizer, template)[0]


def _encoded_pairs(sources, field: str, recipe, tokenizer, template: PromptTemplate) -> tuple[list[PairRow], int]:
    from tunelab.data.preferences import pair_examples, source_pairs
    from tunelab.errors import TunelabError
    pairs = []
    for src in sources:
        pairs += source_pairs(src.path, src.count, src.seed)
    if not pairs:
        raise TunelabError("the preference data is empty", field=field)
    examples = pair_examples(pairs)
    max_len = recipe.data.max_seq_len
    # the answer alone is scored: a conversation's earlier assistant turns are part of the prompt
    chosen = encode_examples(tokenizer, template, [c for c, _ in examples], max_len, "last_turn")
    rejected = encode_examples(tokenizer, template, [r for _, r in examples], max_len, "last_turn")
    rows = [PairRow(c, r) for c, r in zip(chosen, rejected)]
    return rows, sum(c.truncated or r.truncated for c, r in zip(chosen, rejected))
