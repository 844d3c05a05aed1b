"""One OpenAI choice as it is produced: its text split (reasoning, content, tool calls) and
its logprobs, in the shapes of chat and completions, streamed or whole.

`ChoiceState` is fed the engine's events of one choice; streaming sends each `Piece` as a
chunk, the non-streamed answer joins them, so both say the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelhost.llm.output import Delta, OutputSplitter
from modelhost.llm.stream import Logprob, TokenEvent
from modelhost.llm.tool_call_stream import CallDelta


@dataclass(slots=True)
class Piece:
    """What one event adds to a choice (empty unless something can be shown)."""

    delta: Delta
    logprobs: list[Logprob] = field(default_factory=list)
    finish_reason: str | None = None

    def __bool__(self) -> bool:
        return bool(self.delta) or self.finish_reason is not None


class ChoiceState:
    __slots__ = ("_pending", "_splitter", "completion_tokens", "index", "logprobs")

    def __init__(self, index: int, splitter: OutputSplitter | None) -> None:
        self.index = index
        self._splitter = splitter if splitter is not None and not splitter.passthrough else None
        self._pending: list[Logprob] = []
        self.logprobs: list[Logprob] = []
        self.completion_tokens = 0

    def text_only(self, event: TokenEvent) -> str | None:
        """The event's text when `feed` would make a piece of that text alone (no splitter,
        no logprobs, not the last event), counted as `feed` counts it; None otherwise: then
        call `feed`."""
        if (
            self._splitter is not None
            or event.finish_reason is not None
            or event.logprob is not None
            or self._pending
        ):
            return None
        self.completion_tokens = event.completion_tokens
        return event.text

    def feed(self, event: TokenEvent) -> Piece:
        if event.logprob is not None:
            self._pending.append(event.logprob)
            self.logprobs.append(event.logprob)
        self.completion_tokens = event.completion_tokens
        splitter = self._splitter
        delta = Delta(event.text) if splitter is None else splitter.feed(event.text)
        finish: str | None = event.finish_reason
        if finish is not None and splitter is not None:
            delta.add(splitter.finish())
            finish = "tool_calls" if splitter.called else finish
        piece = Piece(delta, [], finish)
        if piece:
            piece.logprobs, self._pending = self._pending, []
        return piece


# --- chat shapes ----------------------------------------------------------------------------


def token_entry(lp: Logprob) -> dict[str, Any]:
    return {
        "token": lp.token.decode("utf-8", errors="replace"),
        "logprob": lp.logprob,
        "bytes": list(lp.token),
    }


def chat_logprobs(entries: list[Logprob]) -> dict[str, Any]:
    content = [
        {**token_entry(lp), "top_logprobs": [token_entry(Logprob(t, v)) for t, v in lp.top]}
        for lp in entries
    ]
    return {"content": content, "refusal": None}


def tool_call_entries(deltas: list[CallDelta]) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` entries: a call's first carries ``id``, ``type`` and
    ``function.name``, the others ``function.arguments`` pieces; joined by ``index``, so a
    whole answer's deltas give whole calls."""
    entries: dict[int, dict[str, Any]] = {}
    for d in deltas:
        entry = entries.get(d.index)
        if entry is None:
            entry = entries[d.index] = {"index": d.index, "function": {"arguments": ""}}
            if d.name is not None:
                entry.update(id=d.id, type="function")
                entry["function"] = {"name": d.name, "arguments": ""}
        entry["function"]["arguments"] += d.arguments
    return list(entries.values())


def chat_message(pieces: list[Piece]) -> dict[str, Any]:
    content = "".join(p.delta.content for p in pieces)
    reasoning = "".join(p.delta.reasoning for p in pieces)
    calls = tool_call_entries([d for p in pieces for d in p.delta.tool_calls])
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return message


def chat_delta(delta: Delta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.reasoning:
        out["reasoning_content"] = delta.reasoning
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = tool_call_entries(delta.tool_calls)
    return out


# --- completions shapes -----------------------------------------------------------------------


def completion_logprobs(entries: list[Logprob], offset: int, want_top: bool) -> dict[str, Any]:
    """The legacy shape: parallel lists; ``offset`` is where the first token's text starts."""
    tokens = [lp.token.decode("utf-8", errors="replace") for lp in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    top = (
        [{t.decode("utf-8", errors="replace"): v for t, v in lp.top} for lp in entries]
        if want_top
        else None
    )
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }
