"""Incremental detokenization: each new token costs a decode of a few tokens, not of the
whole text (the prefix-offset method of vLLM and text-generation-inference).

Two offsets into the ids: `prefix` (where the window starts) and `read` (what is already
out as text). The new text is decode(ids[prefix:]) minus decode(ids[prefix:read]): decoding
from a few tokens back keeps what depends on the neighbours (a leading space a decoder
strips at the start, a character split over byte tokens) right. A text ending in U+FFFD is
an unfinished character: it waits for the next token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, tokens: Sequence[int]) -> str:
        """The text the new `tokens` add (may be empty while a character is unfinished)."""
        self.ids.extend(tokens)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            new = text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held (an unfinished character, as U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""


class TextAssembler:
    """Token ids -> text deltas, with stop strings. Deltas come from an IncrementalDecoder;
    text that could be the start of a stop string is held back until it is known not to be,
    so no part of a stop string is ever handed out and the deltas join to `text`."""

    def __init__(self, decode: Decode, stop: Sequence[str]) -> None:
        self._decoder = IncrementalDecoder(decode)
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._out: list[str] = []
        self._held = ""  # decoded, not yet handed out
        self.stopped = False

    @property
    def ids(self) -> list[int]:
        return self._decoder.ids

    @property
    def text(self) -> str:
        return "".join(self._out)

    def add(self, tokens: int | Sequence[int]) -> str:
        """The new text after `tokens` (may be empty); `stopped` once a stop string is seen."""
        if self.stopped:
            return ""
        new = self._decoder.add([tokens] if isinstance(tokens, int) else tokens)
        return self._take(new, final=False) if new else ""

    def finish(self) -> str:
        """What was held back, at the end."""
        if self.stopped:
            return ""
        return self._take(self._decoder.flush(), final=True)

    def _take(self, new: str, final: bool) -> str:
        text = self._held + new
        found = [at for at in (text.find(s) for s in self._stop) if at >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return self._out_(text[: min(found)])
        upto = len(text) if final else max(0, len(text) - self._hold)
        self._held = text[upto:]
        return self._out_(text[:upto])

    def _out_(self, delta: str) -> str:
        if delta:
            self._out.append(delta)
        return delta
