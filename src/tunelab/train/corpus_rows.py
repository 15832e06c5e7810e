"""The rows of a pretraining run: whole blocks of a prepared corpus, read from its memory map a step at a time.

`CorpusRows` is to a corpus what `RowStream` (train/row_stream.py) is to examples — `rows(start, count)` of an
endless, deterministic stream and `rows_per_epoch` — so the training loop does not care which it trains on.
Only the rows of one step become Python lists; the corpus stays on disk.

- A row holds whole blocks. Packed, blocks share a row with position ids restarting at 0 per block, so no
  block attends to another (the same row layout as packed fine-tuning samples); unpacked, one block a row and
  the rest of the row is padding (`padding_pct` says how much).
- Labels are the block's own tokens: the loss covers every real token including the closing EOT, never
  padding, and a block's first token has no target (nothing inside the block predicts it).
- `sampling="epoch"`: each epoch visits every block once, in a permutation seeded by (seed, epoch). Packed,
  consecutive windows of that order are packed best-fit decreasing (`data.packing.pack_lengths`, the packer
  fine-tuning samples go through too): corpus blocks are
  sentence-aligned and often over half a row long, and first-fit in arrival order left ~20 % of the rows
  padding where this leaves ~13 % (the bound for whole blocks is ~12.9 % on the generated encyclopedia).
  A block never moves out of its window, so the epoch still follows the seeded order at a window's scale.
- `sampling="random"`: blocks drawn with replacement, row r from a generator seeded by (seed, r) alone, so
  any row can be rebuilt without the ones before it (resume). Packed, a row draws up to `RANDOM_DRAWS`
  candidates and keeps each that fits the room left, stopping when no block could fit; a candidate that
  does not fit is not used (so the blocks that fill a row's end are shorter than a uniform draw's; each
  row's first block is uniform). An "epoch" is then as many rows as an epoch of the epoch sampling, i.e.
  about one pass over the corpus's tokens.
- `sampling="sequential"`: the blocks in order, for validation (`limit` keeps the first N).

Fine-tuning on examples can replay a corpus (`replay_blocks`): a seeded draw of its train blocks, without
replacement, joins the examples as samples scored on every token, so the fine-tuned model keeps modelling
the corpus's text (full fine-tuning on short QA pairs alone raised the MiniGPT demo's perplexity 1.96 -> 51).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelab.data.corpus.store import CorpusBlocks
from tunelab.data.packing import IGNORE, Encoded, Row, pack_lengths
from tunelab.errors import TunelabError

SAMPLINGS = ("epoch", "random", "sequential")


RANDOM_DRAWS = 64  # candidates a packed random row draws at most


class CorpusRows:
    """The deterministic row stream over one split of a corpus (see the module docstring)."""

    prefix = 0  # blocks share no prefix held once per row (`data.share_prefix` is for templated samples)

    def __init__(self, blocks: CorpusBlocks, max_len: int, packing: bool, sampling: str = "epoch", seed: int = 0,
                 limit: int | None = None):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}")
        self.blocks, self.max_len, self.packing, self.sampling = blocks, max_len, packing, sampling
        self.seed = seed % 2 ** 64  # numpy's seed sequences take non-negative integers
        self.count = len(blocks) if limit is None else min(limit, len(blocks))
        blocks.check_ids()
        self.lengths = np.asarray(blocks.lengths[: self.count], dtype=np.int64)
        if self.count == 0:
            raise TunelabError(f"the corpus's {blocks.split} split has no blocks", file=blocks.dir)
        longest = int(self.lengths.max())
        self.shortest = int(self.lengths.min())
        if longest > max_len:
            raise TunelabError(f"the corpus's blocks are up to {longest} tokens (block size {blocks.block_size}) "
                               f"but rows hold {max_len}: set data.max_seq_len to at least {longest}",
                               field="data.max_seq_len")
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch_rows: list[int] = []

    # --- which blocks make each row ---------------------------------------------------------------

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(blocks in row order, row starts into it with a final end) of one epoch; the last two are kept."""
        if epoch not in self._layouts:
            if self.sampling == "sequential":
                order = np.arange(self.count)
            else:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.count)
            if self.packing:
                rows = pack_lengths(self.lengths[order].tolist(), self.max_len)
                order = order[np.fromiter((i for row in rows for i in row), dtype=np.int64, count=len(order))]
                starts = np.cumsum([0] + [len(r) for r in rows])
            else:
                starts = np.arange(self.count + 1)
            for old in sorted(self._layouts)[:-1]:
                del self._layouts[old]
            self._layouts[epoch] = (order, starts)
        return self._layouts[epoch]

    def _rows_in_epoch(self, epoch: int) -> int:
        while len(self._epoch_rows) <= epoch:
            self._epoch_rows.append(len(self._layout(len(self._epoch_rows))[1]) - 1)
        return self._epoch_rows[epoch]

    def _random_blocks(self, r: int) -> list[int]:
        rng = np.random.default_rng([self.seed, r])
        if not self.packing:
            return [int(rng.integers(self.count))]
        picked, room = [], self.max_len
        for b in rng.integers(self.count, size=RANDOM_DRAWS).tolist():
            if self.lengths[b] <= room:
                picked.append(b)
                room -= int(self.lengths[b])
                if room < self.shortest:
                    break
        return picked

    def row_blocks(self, start: int, count: int) -> list[list[int]]:
        """Block indices of rows [start, start+count) of the endless stream."""
        if self.sampling == "random":
            return [self._random_blocks(r) for r in range(start, start + count)]
        out, epoch, offset = [], 0, start
        while offset >= self._rows_in_epoch(epoch):
            offset -= self._rows_in_epoch(epoch)
            epoch += 1
        while len(out) < count:
            order, starts = self._layout(epoch)
            take = min(count - len(out), len(starts) - 1 - offset)
            out += [order[starts[k]: starts[k + 1]].tolist() for k in range(offset, offset + take)]
            epoch, offset = epoch + 1, 0
        return out

    # --- the RowStream interface ------------------------------------------------------------------

    @property
    def rows_per_epoch(self) -> int:
        if self.sampling == "random":  # as many rows as an epoch without replacement: ~ one pass over the tokens
            return len(self._layout(0)[1]) - 1 if self.packing else self.count
        return self._rows_in_epoch(0)

    def rows(self, start: int, count: int) -> list[Row]:
        """Rows [start, start+count): each block's tokens, labels (first token unscored) and positions."""
        out = []
        for blocks in self.row_blocks(start, count):
            row = Row()
            for b in blocks:
                ids = self.blocks.block(b).tolist()
                row.input_ids += ids
                row.labels += [IGNORE] + ids[1:]
                row.position_ids += range(len(ids))
                row.sample_tokens += len(ids)
            out.append(row)
        return out

    @property
    def padding_pct(self) -> float:
        """Padding in a rows × max_seq_len grid: the first epoch's rows, or (random) its first 2,000 rows."""
        if self.sampling == "random":
            sample = self.row_blocks(0, min(2000, self.rows_per_epoch))
            real = sum(int(self.lengths[b].sum()) for b in sample)
            return 100 * (1 - real / (len(sample) * self.max_len))
        return 100 * (1 - int(self.lengths.sum()) / (self.rows_per_epoch * self.max_len))


def check_corpus_tokenizer(tokenizer, corpus: str | Path) -> None:
    """The corpus's ids mean something only to the tokenizer that wrote them: refuse another vocabulary."""
    from tunelab.model.loading import load_tokenizer
    tok_dir = Path(corpus) / "tokenizer"
    if tokenizer.get_vocab() != load_tokenizer(str(tok_dir)).get_vocab():
        raise TunelabError("the model's tokenizer is not the one the corpus was prepared with (its ids would "
                           f"mean other tokens): prepare the corpus with the model's tokenizer, or train "
                           f"from scratch on {tok_dir}", field="model.tokenizer")


def corpus_rows(recipe) -> tuple[CorpusRows, CorpusRows | None]:
    """The training rows of a corpus recipe, and its validation rows (None when the val split is empty)."""
    d = recipe.data
    train = CorpusRows(CorpusBlocks(d.corpus, "train"), d.max_seq_len, d.packing, d.sampling, recipe.seed)
    return train, validation_rows(recipe, d.corpus)


def validation_rows(recipe, corpus: str | Path) -> CorpusRows | None:
    """The val split of `corpus` as rows to measure validation loss on (the first `train.val_blocks` blocks);
    None when the split is empty and no validation was asked for (an empty split asked for is an error)."""
    d = recipe.data
    val_blocks = CorpusBlocks(corpus, "val")
    if len(val_blocks) == 0:
        asked = [k for k in ("eval_every", "val_blocks", "early_stopping_patience") if getattr(recipe.train, k)]
        if asked:
            raise TunelabError("the corpus has no validation blocks to evaluate (prepare it with "
                               "a val_fraction above 0)", file=corpus, field=f"train.{asked[0]}")
        return None
    return CorpusRows(val_blocks, d.max_seq_len, d.packing, "sequential", limit=recipe.train.val_blocks)


def replay_blocks(corpus: str | Path, fraction: float, example_tokens: int, max_len: int,
                  seed: int) -> list[Encoded]:
    """Train blocks of `corpus`, in a seeded order without replacement, until they are `fraction` of the
    training tokens (theirs + `example_tokens`), as samples whose labels are their own tokens (the first one
    unscored, as in `CorpusRows.rows`). A corpus too small for the fraction gives all its train blocks."""
    blocks = CorpusBlocks(corpus, "train")
    if len(blocks) == 0:
        raise TunelabError("the corpus to replay has no train blocks", file=blocks.dir, field="data.train")
    lengths = np.asarray(blocks.lengths, dtype=np.int64)
    if int(lengths.max()) > max_len:
        raise TunelabError(f"the replayed corpus's blocks are up to {int(lengths.max())} tokens but rows hold "
                           f"{max_len}: set data.max_seq_len to at least {int(lengths.max())}",
                           field="data.max_seq_len")
    want = fraction / (1 - fraction) * example_tokens
    order = np.random.default_rng([seed % 2 ** 64, 0x7e91a7]).permutation(len(blocks))
    taken = order[: int(np.searchsorted(np.cumsum(lengths[order]), want)) + 1]
    out = []
    for b in taken.tolist():
        ids = blocks.block(b).tolist()
        out.append(Encoded(ids, [IGNORE] + ids[1:]))
    return out


def replay_for(recipe, tokenizer, encoded: list[Encoded]) -> list[Encoded]:
    """The blocks `recipe.data.replay_corpus` mixes into fine-tuning on `encoded`, drawn as training draws them, after
    checking that the corpus was prepared with the model's tokenizer."""
    src = recipe.data.replay_corpus
    check_corpus_tokenizer(tokenizer, src.corpus)
    return replay_blocks(src.corpus, src.replay, sum(len(e.input_ids) for e in encoded), recipe.data.max_seq_len,
                         recipe.seed)


def describe_replay(recipe, blocks: list[Encoded], encoded: list[Encoded]) -> str:
    """One line on what the replay drew: blocks, tokens, and their share of the training tokens."""
    src = recipe.data.replay_corpus
    replayed = sum(len(b.input_ids) for b in blocks)
    share = replayed / (replayed + sum(len(e.input_ids) for e in encoded))
    return (f"replay: {len(blocks):,} blocks of {src.corpus} ({replayed:,} tokens, {100 * share:.1f}% of the "
            f"training tokens, asked {100 * src.replay:g}%; loss on every token)")
