"""Reading tool calls while they are generated, so that their arguments stream piecewise as
OpenAI's do.

`CallScanner` is fed a tool-call region's text (from its marker on) and returns `CallDelta`s.
A call is announced (index, id, name) as soon as its object has shown
``{"name": "...", "arguments": {`` (``"parameters"`` too, Llama 3's key); then its arguments
follow as they arrive, whitespace outside strings dropped, so the pieces join into the same
compact JSON a parsed-and-dumped object reads as. Separators between calls (``</tool_call>``,
``<tool_call>``, ``[``, ``,``, ``;``, ...) are skipped.

A region written another way (the arguments before the name, arguments as a JSON string, a
marker followed by prose) is held and read whole at the end by `ToolSyntax.parse`; when that
finds no call either, the region is given back as content. Once a call is announced it stays
a call: text after the last call is dropped, and arguments cut short by ``max_tokens`` stay
cut (OpenAI's arguments are the model's text too, not checked JSON).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import orjson

from modelhost.llm.tool_calls import ToolSyntax


@dataclass(slots=True)
class CallDelta:
    """What one step adds to tool call ``index``; the first delta of a call names it."""

    index: int
    arguments: str = ""
    name: str | None = None
    id: str | None = None


_SEPARATORS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "[", "]", ",", ";")
_ARGUMENT_KEYS = ('"arguments"', '"parameters"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_HEADER: tuple[tuple[str, ...] | re.Pattern[str], ...] = (
    ("{",),
    ('"name"',),
    (":",),
    _STRING,
    (",",),
    _ARGUMENT_KEYS,
    (":",),
)
_WAIT = True  # the text so far may still become what is expected


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _header(text: str, pos: int) -> tuple[str, int] | bool:
    """``(name, end)`` once ``text[pos:]`` is ``{"name": "...", "arguments":`` followed by the
    first character of the value (``end`` points at it); `_WAIT` while it may still be;
    False when it cannot."""
    name: object = None
    for expected in _HEADER:
        pos = _skip_space(text, pos)
        if pos == len(text):
            return _WAIT
        if isinstance(expected, re.Pattern):
            match = expected.match(text, pos)
            if match is None:
                return text[pos] == '"' and _WAIT  # an unclosed string may still close
            name, pos = orjson.loads(match.group()), match.end()
            continue
        rest = text[pos : pos + max(len(o) for o in expected)]
        hit = next((o for o in expected if rest.startswith(o)), None)
        if hit is None:
            return any(o.startswith(rest) for o in expected) and _WAIT
        pos += len(hit)
    pos = _skip_space(text, pos)
    if pos == len(text):
        return _WAIT
    return (name, pos) if isinstance(name, str) else False


class CallScanner:
    def __init__(self, syntax: ToolSyntax) -> None:
        self._syntax = syntax
        self._text = ""
        self._pos = 0
        self._state = "seek"  # seek, header, arguments, tail, whole (held to the end), done
        self._calls = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    @property
    def called(self) -> bool:
        """At least one call's arguments are complete, and no call is left half-written."""
        return self._calls > 0 and self._state in ("seek", "done")

    def feed(self, text: str) -> list[CallDelta]:
        self._text += text
        out: list[CallDelta] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> tuple[list[CallDelta], str]:
        """The last deltas, and the text to give back as content (a region with no call)."""
        out: list[CallDelta] = []
        while self._step(out, final=True):
            pass
        if self._state != "whole":
            return out, ""
        parsed = self._syntax.parse(self._text)
        if not parsed:
            return out, self._text
        self._state, self._calls = "done", len(parsed)
        return [CallDelta(i, c.arguments, c.name, c.id) for i, c in enumerate(parsed)], ""

    # --- states: each returns whether it moved on ------------------------------------------

    def _step(self, out: list[CallDelta], final: bool) -> bool:
        if self._state == "seek":
            return self._seek(final)
        if self._state == "header":
            return self._open_call(out, final)
        if self._state == "arguments":
            return self._arguments(out)
        if self._state == "tail":
            return self._tail()
        return False

    def _give_up(self) -> bool:
        """Text that is no call: held whole when no call came yet, else dropped."""
        self._state = "done" if self._calls else "whole"
        return False

    def _seek(self, final: bool) -> bool:
        pos = _skip_space(self._text, self._pos)
        self._pos = pos
        rest = self._text[pos:]
        if not rest:
            return False
        if rest[0] == "{":
            self._state = "header"
            return True
        hit = next((s for s in _SEPARATORS if rest.startswith(s)), None)
        if hit is not None:
            self._pos += len(hit)
            return True
        if not final and any(s.startswith(rest) for s in _SEPARATORS):
            return False
        return self._give_up()

    def _open_call(self, out: list[CallDelta], final: bool) -> bool:
        found = _header(self._text, self._pos)
        if found is _WAIT and not final:
            return False
        if not isinstance(found, tuple) or self._text[found[1]] != "{":
            return self._give_up()
        name, self._pos = found
        out.append(CallDelta(self._calls, "", name, f"call_{uuid.uuid4().hex[:24]}"))
        self._state, self._depth = "arguments", 0
        return True

    def _arguments(self, out: list[CallDelta]) -> bool:
        text, piece = self._text, []
        pos = self._pos
        while pos < len(text):
            char = text[pos]
            pos += 1
            if not self._in_string and char.isspace():
                continue
            piece.append(char)
            if self._track(char) == 0:
                self._state, self._depth = "tail", 1  # the call object is still open
                break
        self._pos = pos
        if piece:
            out.append(CallDelta(self._calls, "".join(piece)))
        if self._state == "tail":
            self._calls += 1
            return True
        return False

    def _tail(self) -> bool:
        """Skip the rest of the call object (its closing brace, keys after the arguments)."""
        text, pos = self._text, self._pos
        while pos < len(text):
            depth = self._track(text[pos])
            pos += 1
            if depth == 0:
                self._pos, self._state = pos, "seek"
                return True
        self._pos = pos
        return False

    def _track(self, char: str) -> int:
        """Follow strings and nesting; the depth after ``char``."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
        return self._depth
