"""Splitting generated text into reasoning, content and tool calls (pure logic)."""

from __future__ import annotations

import json

import pytest

from modelhost.llm.output import Delta, OutputSplitter
from modelhost.llm.protocols.openai_choices import tool_call_entries
from modelhost.llm.tool_calls import HERMES, LLAMA3, MISTRAL, ToolSyntax, syntax_for

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def deltas(splitter: OutputSplitter, pieces: list[str]) -> list[Delta]:
    return [*(splitter.feed(piece) for piece in pieces), splitter.finish()]


def run(splitter: OutputSplitter, pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    whole = Delta()
    for delta in deltas(splitter, pieces):
        whole.add(delta)
    calls = tool_call_entries(whole.tool_calls)
    return (
        whole.content,
        whole.reasoning,
        [(c["function"]["name"], c["function"]["arguments"]) for c in calls],
    )


def chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.parametrize("split", [lambda t: [t], chars])
def test_hermes_call_after_text(split: object) -> None:
    text = f"Let me check.\n<tool_call>\n{CALL}\n</tool_call>"
    content, _, calls = run(OutputSplitter(HERMES), split(text))  # type: ignore[operator]
    assert content == "Let me check.\n"
    assert calls == [("get_weather", json.dumps({"city": "Paris"}, separators=(",", ":")))]


def test_text_that_only_looks_like_a_marker_is_given_back() -> None:
    text = "a < b and <tool_call>not json</tool_call>"
    content, _, calls = run(OutputSplitter(HERMES), chars(text))
    assert content == text and calls == []


def test_mistral_and_llama3_syntaxes() -> None:
    two = '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'
    assert [c[0] for c in run(OutputSplitter(MISTRAL), chars(two))[2]] == ["a", "b"]
    llama = ' {"name": "get_weather", "parameters": {"city": "Paris"}}'
    content, _, calls = run(OutputSplitter(LLAMA3), chars(llama))
    assert content == "" and calls[0][0] == "get_weather"
    prose = "The answer is {not a call}"
    assert run(OutputSplitter(LLAMA3), chars(prose))[0] == prose


def test_syntax_from_template() -> None:
    assert syntax_for("{{ '<tool_call>' }}") is HERMES
    assert syntax_for("[TOOL_CALLS] {{ x }}") is MISTRAL
    assert syntax_for("<|python_tag|>") is LLAMA3
    assert syntax_for("<|im_start|>") is HERMES


@pytest.mark.parametrize("split", [lambda t: [t], chars])
def test_reasoning_split(split: object) -> None:
    text = "<think>\nThe user wants Paris.\n</think>\n\nParis."
    content, reasoning, _ = run(OutputSplitter(None, think=True), split(text))  # type: ignore[operator]
    assert reasoning == "\nThe user wants Paris.\n" and content == "Paris."
    opened = run(OutputSplitter(None, think=True, starts_thinking=True), chars("hmm</think>ok"))
    assert opened[:2] == ("ok", "hmm")
    plain = run(OutputSplitter(None, think=True), chars("No thoughts here."))
    assert plain[:2] == ("No thoughts here.", "")


def test_forced_call_grammar_wraps_the_call_rule() -> None:
    syntax: ToolSyntax = HERMES
    grammar = syntax.grammar('root ::= "{" space "}"\nspace ::= " "?')
    assert grammar.startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>"')
    assert 'call ::= "{" space "}"' in grammar


def test_arguments_stream_piecewise_after_the_name() -> None:
    text = f'<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{{"name": "b", "arguments": {{}}}}'
    steps = [d.tool_calls for d in deltas(OutputSplitter(HERMES), chars(text))]
    flat = [d for step in steps for d in step]
    first = flat[0]
    assert first.index == 0 and first.name == "get_weather" and first.id and not first.arguments
    pieces = [d.arguments for d in flat if d.index == 0 and d.name is None]
    assert len(pieces) > 5  # one per generated character, not one at the end
    assert "".join(pieces) == '{"city":"Paris"}'
    assert sum(1 for step in steps if any(d.index == 0 for d in step)) > 5
    second = [d for d in flat if d.index == 1]
    assert second[0].name == "b" and "".join(d.arguments for d in second) == "{}"
    assert first.id != second[0].id


@pytest.mark.parametrize(
    "args",
    [
        '{"q": "a  b } { \\" [x]", "n": [1, {"m": null}]}',
        '{"nested": {"deep": {"k": "v"}}, "list": []}',
        "{}",
    ],
)
def test_streamed_arguments_join_into_the_compact_json(args: str) -> None:
    text = f'<tool_call>{{"name": "f", "arguments": {args}}}</tool_call>'
    for split in ([text], chars(text)):
        _, _, calls = run(OutputSplitter(HERMES), split)
        assert calls == [("f", json.dumps(json.loads(args), separators=(",", ":")))]


def test_a_call_written_another_way_is_read_whole_at_the_end() -> None:
    text = '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>'
    steps = deltas(OutputSplitter(HERMES), chars(text))
    assert not any(d.tool_calls for d in steps[:-1])
    (call,) = tool_call_entries(steps[-1].tool_calls)
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}


def test_arguments_cut_short_are_not_a_finished_call() -> None:
    splitter = OutputSplitter(HERMES)
    _ = deltas(splitter, chars('<tool_call>{"name": "f", "arguments": {"city": "Pa'))
    assert not splitter.called
    done = OutputSplitter(HERMES)
    _ = deltas(done, chars(f"<tool_call>{CALL}</tool_call>"))
    assert done.called
