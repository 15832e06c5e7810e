"""Packing a cleaned document's sentences into blocks of at most `block_size` tokens, the final EOT included.

No block spans two documents; a sentence longer than a block is cut at its last comma/colon/space that
fits, else at the last token boundary that is also a character boundary, and counted. Nothing is dropped:
the blocks of a document, decoded without their EOT and joined, give its cleaned text back.

Each document is tokenised whole (so tokens across a sentence end are the ones the tokenizer would give the
running text) and the blocks are cut between its tokens, at the token boundary that ends a sentence or lies
in the whitespace after it. Decoding each block alone gives back its characters exactly for byte-level BPE
(GPT-2, Qwen, Llama-3 and `tunelab tokenizer train` tokenizers). A tokenizer that is not lossless — a
SentencePiece one that adds "▁" in front of every text, or one whose normalizer rewrites characters — still
prepares, and `--verify` reports each document whose decoded blocks differ from its text. Common byte-level
pipelines are encoded by `encode.fast_encoder` (the tokenizer's own ids, checked on a sample, faster).
"""

from __future__ import annotations

import json
from bisect import bisect_right

from tunelab.data.corpus.encode import fast_encoder
from tunelab.data.corpus.kept import Kept
from tunelab.data.corpus.sentences import count_sentences, soft_split_kinds, split_sentences
from tunelab.data.corpus.store import read_tokenizer_file, token_dtype
from tunelab.errors import TunelabError


class BlockPacker:
    """Tokenises documents whole and cuts their tokens into blocks at sentence ends (see the module doc)."""

    def __init__(self, tokenizer_file: str, block_size: int, eot_id: int):
        import numpy as np
        self.np = np
        self.tok = read_tokenizer_file(tokenizer_file)
        self.tok.encode_special_tokens = True     # "<|endoftext|>" typed in a document is text, not EOT
        self.cap = block_size - 1                 # tokens of text per block; EOT takes the last place
        self.dtype = np.dtype(token_dtype(self.tok.get_vocab_size(with_added_tokens=True)))
        self.eot_id = eot_id
        spec = json.loads(self.tok.to_str())      # read once: a large vocabulary's JSON takes a while
        self.token_bytes = _byte_level_token_bytes(self.tok, spec)
        self.fast = fast_encoder(self.tok, spec) if self.token_bytes is not None else None
        self.fast_checked = False

    def pack(self, docs: list[Kept]) -> None:
        if not docs:
            return
        texts = [k.doc.text for k in docs]
        if self.fast is not None and not self.fast_checked:   # rely on the fast encoder once it agrees
            self.fast_checked = True
            if not self.fast.agrees_with(self.tok, texts[:64]):
                self.fast = None
        if self.fast is not None:
            encoded = [(self.fast.encode(t), None) for t in texts]
        elif self.token_bytes is not None:
            encoded = [(e.ids, None) for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            encoded = [(e.ids, e) for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        for kept, (ids, enc) in zip(docs, encoded):
            self._pack_one(kept, ids, enc)

    def _boundaries(self, text: str, ids: list[int], enc):
        """(ids, character position and is-a-character-boundary of each token boundary 0..n)."""
        np = self.np
        ids = np.asarray(ids, dtype=np.int64)
        if enc is None:
            raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            ends = np.concatenate(([0], np.cumsum(self.token_bytes[ids])))
            if ends[-1] == raw.size:
                starts_char = np.append((raw & 0xC0) != 0x80, True)      # not a UTF-8 continuation byte
                char_at = np.concatenate(([0], np.cumsum(starts_char[:-1])))
                return ids, char_at[ends], starts_char[ends]
            enc = self.tok.encode(text, add_special_tokens=False)       # bytes differ: fall back to offsets
            ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        pos = np.append(offsets[:, 0], len(text))
        ok = np.ones(len(ids) + 1, dtype=bool)
        ok[1:-1] = offsets[:-1, 1] <= offsets[1:, 0]                     # no character shared by two tokens
        if len(ids):
            pos[0] = 0
        return ids, pos, ok

    def _pack_one(self, kept: Kept, ids: list[int], enc) -> None:
        np = self.np
        text = kept.doc.text
        if len(ids) <= self.cap:                  # the whole document is one block: nothing to cut
            kept.sentences = count_sentences(text)
            ids.append(self.eot_id)
            kept.tokens, kept.block_lengths = ids, [len(ids)]
            return
        sentences = split_sentences(text)
        kept.sentences = len(sentences)
        ids, pos, ok = self._boundaries(text, ids, enc)
        n = len(ids)
        cut_idx = np.flatnonzero(ok)              # token boundaries where a block may end
        cut_pos = pos[cut_idx]
        sent_ends = np.cumsum([len(s) for s in sentences])
        snap = _Snapper(text, cut_idx, cut_pos)
        cuts = sorted(set(k for k in snap.many(sent_ends) if k is not None) | {n})
        blocks: list[tuple[int, int]] = []
        cur = 0
        soft: dict[int, list[list[int]]] = {}
        while cur < n:
            limit = cur + self.cap
            j = bisect_right(cuts, limit) - 1
            if n <= limit:
                end = n
            elif j >= 0 and cuts[j] > cur:
                end = cuts[j]
            else:
                end = self._cut_long(snap, sentences, sent_ends, int(pos[cur]), cur, limit, kept, soft)
            blocks.append((cur, end))
            cur = end
        ids = ids.tolist()
        kept.tokens = [t for s, e in blocks for t in (*ids[s:e], self.eot_id)]
        kept.block_lengths = [e - s + 1 for s, e in blocks]

    def _cut_long(self, snap: _Snapper, sentences, sent_ends, char_pos: int, cur: int, limit: int,
                  kept: Kept, soft: dict[int, list[list[int]]]) -> int:
        """Where a block inside a too-long sentence ends: the last point after punctuation that fits, else the
        last after whitespace (`soft_split_points`' order), else a token boundary.

        A sentence's points are found and snapped to token boundaries once (`soft`, by sentence), not once a
        block: a 200,000-character sentence took 84 s at block size 32. Snapping keeps their order, so the
        last that fits is found by bisection."""
        s = min(int(self.np.searchsorted(sent_ends, char_pos, side="right")), len(sentences) - 1)
        if s not in soft:
            start = int(sent_ends[s - 1]) if s else 0
            soft[s] = [[k for k in snap.many(self.np.asarray(points, dtype=self.np.int64) + start) if k is not None]
                       for points in soft_split_kinds(sentences[s])]
        for snapped in soft[s]:
            i = bisect_right(snapped, limit) - 1
            if i >= 0 and snapped[i] > cur:
                kept.soft_cuts += 1
                return snapped[i]
        i = int(self.np.searchsorted(snap.cut_idx, limit, side="right")) - 1
        k = int(snap.cut_idx[i])
        if k <= cur:
            raise TunelabError(f"block size {self.cap + 1} is too small: one character of document "
                               f"{kept.doc.id or ''} needs more tokens", file=kept.doc.file, line=kept.doc.line)
        kept.token_cuts += 1
        return k


class _Snapper:
    """Maps a character position to the token boundary that ends there, or that starts the whitespace before it.

    Byte-level BPE glues a space to the next word (" The"), so "Hello. " | "The" is cut as "Hello." | " The".
    """

    def __init__(self, text: str, cut_idx, cut_pos):
        self.text, self.cut_idx, self.cut_pos = text, cut_idx, cut_pos

    def many(self, positions) -> list[int | None]:
        import numpy as np
        i = np.searchsorted(self.cut_pos, positions, side="right") - 1
        out: list[int | None] = []
        for c, j in zip(positions.tolist(), i.tolist()):
            out.append(self._at(c, j))
        return out

    def one(self, position: int) -> int | None:
        import numpy as np
        return self._at(position, int(np.searchsorted(self.cut_pos, position, side="right")) - 1)

    def _at(self, c: int, j: int) -> int | None:
        if j < 0:
            return None
        p = int(self.cut_pos[j])
        if p == c or self.text[p:c].isspace():
            return int(self.cut_idx[j])
        return None


def _byte_level_token_bytes(tok, spec: dict):
    """UTF-8 length of every token id for a byte-level BPE without a normalizer (else None: use offsets);
    `spec` is the tokenizer's JSON, parsed."""
    import numpy as np
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or spec.get("normalizer") is not None:
        return None
    size = tok.get_vocab_size(with_added_tokens=True)
    lengths = np.zeros(size, dtype=np.int64)
    for token, i in tok.get_vocab(with_added_tokens=False).items():
        lengths[i] = len(token)          # one byte-level character per byte
    for i, added in tok.get_added_tokens_decoder().items():
        lengths[i] = len(added.content.encode("utf-8"))   # added tokens are kept as plain text
    return lengths
