"""Tool-call syntaxes of chat models: how a model writes a call, and how it is read back.

The syntax is chosen from the chat template (as llama-server and vLLM pick a parser):

- ``hermes`` — ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen
  2/2.5/3, SmolLM3, and every template that does not render tools itself: for those the
  tools are described in a system message asking for this syntax);
- ``mistral`` — ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``;
- ``llama3`` — a bare JSON object ``{"name": ..., "parameters": {...}}`` as the whole
  answer, optionally after ``<|python_tag|>`` (Llama 3.1 / 3.2 / 3.3).

Each syntax also gives the grammar that forces one call (``tool_choice`` ``required`` or a
named function) around a JSON-schema rule for the call object.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str
    """JSON text of the arguments object, as OpenAI sends it."""
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def _call(obj: object, args_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], orjson.dumps(args).decode())


def _loads(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class ToolSyntax:
    name: str
    markers: tuple[str, ...]
    """Text that opens a tool-call region anywhere in the output."""
    leading: str = ""
    """Text that opens one only at the very start of the output (after whitespace)."""
    args_key: str = "arguments"

    def parse(self, region: str) -> list[ToolCall] | None:
        """The calls in ``region`` (from its marker to the end); None if it holds none."""
        if self.name == "hermes":
            bodies = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", region, re.S)
            calls = [_call(_loads(b), self.args_key) for b in bodies]
        else:
            body = region
            for marker in self.markers:
                body = body.removeprefix(marker)
            parsed = _loads(body.strip())
            if parsed is None and self.name == "llama3":
                parsed = [_loads(part) for part in body.split(";")]
            items = parsed if isinstance(parsed, list) else [parsed]
            calls = [_call(item, self.args_key) for item in items]
        if not calls or any(c is None for c in calls):
            return None
        return [c for c in calls if c is not None]

    def write(self, name: str, arguments: object) -> str:
        """A call as the model would write it (for earlier turns, in templates that do not
        render ``tool_calls`` themselves)."""
        obj = {"name": name, self.args_key: arguments}
        text = orjson.dumps(obj).decode()
        if self.name == "hermes":
            return f"<tool_call>\n{text}\n</tool_call>"
        if self.name == "mistral":
            return f"[TOOL_CALLS][{text}]"
        return text

    def grammar(self, call_rules: str) -> str:
        """Force exactly one call: ``call_rules`` is GBNF whose ``root`` is the call object."""
        rules = re.sub(r"^root ::=", "call ::=", call_rules, flags=re.M)
        if self.name == "hermes":
            root = 'root ::= "<tool_call>\\n" call "\\n</tool_call>"'
        elif self.name == "mistral":
            root = 'root ::= "[TOOL_CALLS][" call "]"'
        else:
            root = "root ::= call"
        return f"{root}\n{rules}"

    def call_schema(self, tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON schema of one call to any of ``tools`` (OpenAI function specs)."""
        options = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool["name"]},
                    self.args_key: tool.get("parameters") or {"type": "object"},
                },
                "required": ["name", self.args_key],
            }
            for tool in tools
        ]
        return options[0] if len(options) == 1 else {"anyOf": options}


HERMES = ToolSyntax("hermes", ("<tool_call>",))
MISTRAL = ToolSyntax("mistral", ("[TOOL_CALLS]",))
LLAMA3 = ToolSyntax("llama3", ("<|python_tag|>",), leading="{", args_key="parameters")


def syntax_for(template: str) -> ToolSyntax:
    """The syntax a chat template's model was trained on; Hermes when it shows none."""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or '"parameters"' in template or "ipython" in template:
        return LLAMA3
    return HERMES


def tools_system_prompt(tools: Sequence[dict[str, Any]], syntax: ToolSyntax) -> str:
    """How tools are described to a model whose template does not render them."""
    specs = "\n".join(orjson.dumps(t).decode() for t in tools)
    example = syntax.write("<function-name>", {"<arg>": "<value>"})
    return (
        "You may call functions to help answer. The available functions:\n"
        f"<tools>\n{specs}\n</tools>\n"
        f"To call one, answer with only this (arguments as JSON):\n{example}"
    )
