"""From generated tokens to text, as they arrive: incremental detokenisation and stop strings.
"""

from __future__ import annotations

class TextStream:
    """One row's generated text, decoded as tokens arrive and cut at the first stop string.

    Only a short window is decoded per token (as vLLM does): the text of tokens [prefix:] minus the text
    of [prefix:read], so a tokenizer that drops a leading space on the first token, or a character split
    over several byte tokens, still comes out right. An incomplete UTF-8 character waits for its next byte
    token unless the stream is final."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False       # a stop string was found; text ends before it
        self._prefix = self._read = 0

    def add(self, token: int | None, final: bool = False) -> bool:
        """Take one generated token (None: no new token, e.g. the row ended on a stop token); returns
        True once a stop string has ended the text (later tokens are ignored)."""
        if self.stopped:
            return True
        if token is not None:
            self.ids.append(token)
        before = len(self.text)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        new = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(new) > len(prefix) and (final or not new.endswith("\ufffd")):
            self.text += new[len(prefix):]
            self._prefix, self._read = self._read, len(self.ids)
        if self.stop and not self.stopped and len(self.text) > before:
            hits = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
        return self.stopped

    def safe_length(self, shown: int = 0) -> int:
        """How much of the text can be shown now: all but a tail (after `shown`) that may be the start of
        a stop string."""
        hold = 0
        if not self.stopped:
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text) - shown), hold, -1):
                    if self.text.endswith(s[:k]):
                        hold = k
                        break
        return len(self.text) - hold
