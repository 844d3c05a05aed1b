"""Splitting a choice's generated text into reasoning, content and tool calls.

Fed the text deltas in order, `OutputSplitter` returns what can be shown at once and holds
back what might still turn out to be a ``</think>`` or a tool-call marker (as stop strings
are held back). The non-streamed answer is the same splitter fed everything, so streamed
and non-streamed answers always agree.

- reasoning: with ``think`` on, output that starts with ``<think>`` (or a prompt that
  already opened it, ``starts_thinking``) is ``reasoning_content`` up to ``</think>``;
- tool calls: from the first marker of the `ToolSyntax` on, text is held; at the end it
  becomes ``tool_calls`` when it parses, or is given back as content when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelhost.llm.tool_calls import ToolCall, ToolSyntax

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(slots=True)
class Delta:
    content: str = ""
    reasoning: str = ""

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning)


@dataclass(slots=True)
class Split:
    """The whole answer of one choice."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall] = field(default_factory=list)


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
        self._region = ""
        self._seen_content = False
        self._strip_lead = False
        self._content: list[str] = []
        self._reasoning: list[str] = []

    @property
    def passthrough(self) -> bool:
        """Nothing to split: text goes straight through."""
        return self._tools is None and self._state == "content"

    def feed(self, text: str) -> Delta:
        delta = Delta()
        if self._region:
            self._region += text
            return delta
        self._held += text
        self._advance(delta, final=False)
        self._content.append(delta.content)
        self._reasoning.append(delta.reasoning)
        return delta

    def finish(self) -> tuple[Delta, list[ToolCall]]:
        """The rest of the text and the tool calls, at the end of generation."""
        delta = Delta()
        if not self._region:
            self._advance(delta, final=True)
        calls: list[ToolCall] = []
        if self._region:
            parsed = self._tools.parse(self._region) if self._tools else None
            if parsed:
                calls = parsed
            else:
                delta.content += self._region
            self._region = ""
        self._content.append(delta.content)
        self._reasoning.append(delta.reasoning)
        return delta, calls

    def result(self, calls: list[ToolCall]) -> Split:
        return Split("".join(self._content), "".join(self._reasoning), calls)

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
            self._region, self._held = text.lstrip(), ""  # the whole answer is a call
            return
        if starts:
            at = min(starts)
            delta.content += text[:at]
            self._region, self._held = text[at:], ""
            return
        keep = 0 if final else max(_partial_suffix(text, m) for m in syntax.markers)
        if syntax.leading and not self._seen_content and not text.strip() and not final:
            keep = len(text)  # only whitespace so far: a leading "{" may still come
        shown = text[: len(text) - keep]
        delta.content += shown
        self._seen_content = self._seen_content or bool(shown.strip())
        self._held = text[len(text) - keep :]
