"""Splitting a choice's generated text into reasoning, content and tool calls.

Fed the text deltas in order, `OutputSplitter` returns what can be shown at once and holds
back what might still turn out to be a ``</think>`` or a tool-call marker (as stop strings
are held back). The non-streamed answer is the same splitter fed everything, so streamed
and non-streamed answers always agree.

- reasoning: with ``think`` on, output that starts with ``<think>`` (or a prompt that
  already opened it, ``starts_thinking``) is ``reasoning_content`` up to ``</think>``;
- tool calls: from the first marker of the `ToolSyntax` on, text goes to a `CallScanner`,
  which hands out each call's name and then its arguments piece by piece as they are
  generated; a region it cannot read as it comes is parsed whole at the end, and given
  back as content when it holds no call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelhost.llm.tool_call_stream import CallDelta, CallScanner
from modelhost.llm.tool_calls import ToolSyntax

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(slots=True)
class Delta:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[CallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def add(self, other: Delta) -> None:
        self.content += other.content
        self.reasoning += other.reasoning
        self.tool_calls += other.tool_calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that starts ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class OutputSplitter:
    def __init__(
        self, tools: ToolSyntax | None = None, think: bool = False, starts_thinking: bool = False
    ) -> None:
        self._tools = tools
        self._state = "think" if think and starts_thinking else ("start" if think else "content")
        self._held = ""
        self._calls: CallScanner | None = None
        self._seen_content = False
        self._strip_lead = False

    @property
    def passthrough(self) -> bool:
        """Nothing to split: text goes straight through."""
        return self._tools is None and self._state == "content"

    @property
    def called(self) -> bool:
        """The answer made at least one whole tool call (its finish reason is ``tool_calls``)."""
        return self._calls is not None and self._calls.called

    def feed(self, text: str) -> Delta:
        if self._calls is not None:
            return Delta(tool_calls=self._calls.feed(text))
        delta = Delta()
        self._held += text
        self._advance(delta, final=False)
        return delta

    def finish(self) -> Delta:
        """The rest, at the end of generation."""
        delta = Delta()
        if self._calls is None:
            self._advance(delta, final=True)
        if self._calls is not None:
            delta.tool_calls, given_back = self._calls.finish()
            delta.content += given_back
        return delta

    def _start_calls(self, delta: Delta, syntax: ToolSyntax, region: str) -> None:
        self._calls, self._held = CallScanner(syntax), ""
        delta.tool_calls += self._calls.feed(region)

    # --- states -----------------------------------------------------------------------

    def _advance(self, delta: Delta, final: bool) -> None:
        while True:
            before = (self._state, self._held)
            if self._state == "start":
                self._at_start(final)
            elif self._state == "think":
                self._in_thought(delta, final)
            else:
                self._in_content(delta, final)
            if (self._state, self._held) == before or not self._held:
                return

    def _at_start(self, final: bool) -> None:
        text = self._held.lstrip()
        if text.startswith(THINK_OPEN):
            self._state, self._held = "think", text[len(THINK_OPEN) :]
        elif final or not THINK_OPEN.startswith(text):
            self._state = "content"

    def _in_thought(self, delta: Delta, final: bool) -> None:
        text = self._held
        at = text.find(THINK_CLOSE)
        if at >= 0:
            delta.reasoning += text[:at]
            self._state, self._held = "content", text[at + len(THINK_CLOSE) :]
            self._strip_lead = True  # the blank lines between thought and answer
            return
        keep = 0 if final else _partial_suffix(text, THINK_CLOSE)
        delta.reasoning += text[: len(text) - keep]
        self._held = text[len(text) - keep :]

    def _in_content(self, delta: Delta, final: bool) -> None:
        if self._strip_lead:
            self._held = self._held.lstrip()
            self._strip_lead = not self._held
        text, syntax = self._held, self._tools
        if syntax is None:
            delta.content += text
            self._held = ""
            return
        starts = [at for at in (text.find(m) for m in syntax.markers) if at >= 0]
        if syntax.leading and not self._seen_content and text.lstrip().startswith(syntax.leading):
            self._start_calls(delta, syntax, text.lstrip())  # the whole answer is a call
            return
        if starts:
            at = min(starts)
            delta.content += text[:at]
            self._start_calls(delta, syntax, text[at:])
            return
        keep = 0 if final else max(_partial_suffix(text, m) for m in syntax.markers)
        if syntax.leading and not self._seen_content and not text.strip() and not final:
            keep = len(text)  # only whitespace so far: a leading "{" may still come
        shown = text[: len(text) - keep]
        delta.content += shown
        self._seen_content = self._seen_content or bool(shown.strip())
        self._held = text[len(text) - keep :]
