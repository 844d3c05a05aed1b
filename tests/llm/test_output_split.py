"""Splitting generated text into reasoning, content and tool calls (pure logic)."""

from __future__ import annotations

import json

import pytest

from modelhost.llm.output import OutputSplitter
from modelhost.llm.tool_calls import HERMES, LLAMA3, MISTRAL, ToolSyntax, syntax_for

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def run(splitter: OutputSplitter, pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    content, reasoning = "", ""
    for piece in pieces:
        delta = splitter.feed(piece)
        content, reasoning = content + delta.content, reasoning + delta.reasoning
    rest, calls = splitter.finish()
    return (
        content + rest.content,
        reasoning + rest.reasoning,
        [(c.name, c.arguments) for c in calls],
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
