"""Turning generated tokens into text deltas: incremental UTF-8 and stop strings.

A token may end in the middle of a UTF-8 character; the incremental decoder keeps those
bytes until the character is complete. Stop strings are matched on the decoded text: text
that could still become a stop string is held back, so a stop string is never emitted,
even when it spans several tokens.
"""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feed token bytes, get the text that is safe to emit."""

    __slots__ = ("_decoder", "_held", "_stops")

    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = stops or []
        self._held = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """Add one token's bytes; returns ``(text to emit, hit a stop string)``."""
        text = self._decoder.decode(data)
        if not self._stops:
            return text, False
        text = self._held + text
        cut = _first_stop(text, self._stops)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        hold = _partial_stop_length(text, self._stops)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The text still held back (an unfinished character becomes U+FFFD)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text


def _first_stop(text: str, stops: list[str]) -> int:
    found = -1
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (found < 0 or at < found):
            found = at
    return found


def _partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that is the start of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
