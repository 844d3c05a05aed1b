"""Tokens of prompt heads seen before: a long system prompt is tokenized once, not per request.

Chat requests behind one system prompt render to texts that share their first thousands of
characters, and llama.cpp's tokenizer costs about 1.3 µs per token on the worker's event
loop (0.66 ms for the benchmark's 519-token shared prompt, on every request; 21 ms of
intake for a burst of 32). llama.cpp cuts a text at special tokens (``<|im_end|>`` ...)
and tokenizes the plain text between them piece by piece (``llama_vocab::impl::tokenize``),
so a text cut right after a special token tokenizes as the head's tokens followed by the
rest's, the rest tokenized without BOS (with SentencePiece, the rest's first piece gets
the leading space it gets after a special token either way).

`HeadTokens` keeps the tokens of a few such heads. A text that starts with one is tokenized
from there on only. Heads are learned from two texts in a row: their common start, cut back
to the end of the last special token in it, becomes a head once tokenizing it and the rest
separately gave exactly the tokens of the whole text. A head is never cut after a special
token that strips the whitespace after it (``RSTRIP``) or that could be part of a longer
special token reaching past the cut: there the rest's tokens could depend on the head.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from modelhost.llm.slots import common_prefix

# Heads shorter than this save too little to be worth a lookup (~100 tokens).
MIN_CHARS = 400
MAX_HEADS = 8

RawTokenize = Callable[[str, bool], list[int]]
"""``(text, add_special) -> tokens``, special tokens in the text parsed as such."""


class HeadTokens:
    def __init__(
        self,
        tokenize: RawTokenize,
        specials: Iterable[str],
        strips_after: Iterable[str] = (),
        *,
        min_chars: int = MIN_CHARS,
        max_heads: int = MAX_HEADS,
    ) -> None:
        texts = sorted({s for s in specials if s}, key=len, reverse=True)
        self._tokenize = tokenize
        self._ends = _safe_ends(texts, set(strips_after))
        # a special token's text: the longest at each position, as llama.cpp prefers
        self._special = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._min_chars = max(1, min_chars)
        self._max_heads = max(1, max_heads)
        self._heads: OrderedDict[str, list[int]] = OrderedDict()  # most recently used last
        self._refused: set[str] = set()
        self._last = ""
        self._lock = threading.Lock()
        self.hits = 0

    def __call__(self, text: str) -> list[int]:
        with self._lock:
            head = self._longest_head(text)
            if head is not None:
                self._heads.move_to_end(head)
                self.hits += 1
                tokens = self._heads[head]
        if head is not None:
            return tokens + self._tokenize(text[len(head) :], False)
        whole = self._tokenize(text, True)
        self._learn(text, whole)
        return whole

    def _longest_head(self, text: str) -> str | None:
        found = None
        for head in self._heads:
            if (found is None or len(head) > len(found)) and text.startswith(head):
                found = head
        return found

    def _learn(self, text: str, whole: list[int]) -> None:
        with self._lock:
            last, self._last = self._last, text
        cut = self._cut(text, common_prefix(last, text))
        if cut < self._min_chars:
            return
        head = text[:cut]
        with self._lock:
            if head in self._heads or head in self._refused:
                return
        tokens = self._tokenize(head, True)
        if tokens + self._tokenize(text[cut:], False) != whole:
            with self._lock:
                if len(self._refused) < 64:
                    self._refused.add(head)
            return
        with self._lock:
            self._heads[head] = tokens
            while len(self._heads) > self._max_heads:
                self._heads.popitem(last=False)

    def _cut(self, text: str, length: int) -> int:
        """End of the last special token lying wholly in ``text[:length]`` after which a
        head may end (0: none)."""
        if self._special is None or length < self._min_chars:
            return 0
        cut = 0
        for match in self._special.finditer(text, 0, length):
            if match.group() in self._ends:
                cut = match.end()
        return cut


def _safe_ends(specials: list[str], strips_after: set[str]) -> frozenset[str]:
    """The special tokens a head may end with: not ``RSTRIP``, not inside a longer one, and
    no longer one starting with a piece of their end (which could take the rest's first
    characters with it)."""
    safe = []
    for end in specials:
        if end in strips_after:
            continue
        if any(other != end and (end in other or _overlaps(end, other)) for other in specials):
            continue
        safe.append(end)
    return frozenset(safe)


def _overlaps(end: str, other: str) -> bool:
    """Whether ``other`` starts with a proper suffix of ``end`` and goes on past it."""
    return any(len(other) > k and other.startswith(end[-k:]) for k in range(1, len(end)))
