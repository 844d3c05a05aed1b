"""Structured output: OpenAI's ``response_format`` (and JSON schemas in general) as GBNF.

The conversion is llama.cpp's own JSON-schema converter (``llama_cpp.llama_grammar``).
It silently ignores keywords it cannot express (``minimum``, ``uniqueItems``, ``not``, ...),
which would let an output through that the schema rejects; so every keyword is checked
first against what the grammar enforces, and any other is refused with 400 naming it
and where it sits. Keywords that only annotate (``title``, ``description``, ...) pass.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson

from modelhost.errors import BadRequest

ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "minLength", "maxLength", "format",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "strict", "name",
    }
)  # fmt: skip
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _refuse(where: str, message: str) -> BadRequest:
    return BadRequest(f"response_format: {where}: {message}", param="response_format")


def check_schema(schema: object, where: str = "schema") -> None:
    """Refuse (400) what the grammar would not enforce."""
    if isinstance(schema, bool):
        if schema:
            return
        raise _refuse(where, "the schema `false` matches nothing")
    if not isinstance(schema, Mapping):
        raise _refuse(where, "a schema must be an object")
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise _refuse(where, f"`{key}` cannot be enforced by grammar-constrained decoding")
        _check_keyword(key, value, f"{where}.{key}")


def _check_keyword(key: str, value: Any, where: str) -> None:
    if key in _SUBSCHEMA_MAPS:
        if not isinstance(value, Mapping):
            raise _refuse(where, "must be an object")
        for name, sub in value.items():
            check_schema(sub, f"{where}.{name}")
    elif key in _SUBSCHEMA_LISTS:
        if not isinstance(value, list) or not value:
            raise _refuse(where, "must be a non-empty list")
        for i, sub in enumerate(value):
            check_schema(sub, f"{where}[{i}]")
    elif key in ("items", "additionalProperties"):
        check_schema(value, where)
    elif key == "type":
        names = value if isinstance(value, list) else [value]
        if not all(isinstance(t, str) and t in TYPES for t in names):
            raise _refuse(where, f"unknown type {value!r}")
    elif key == "format" and value not in FORMATS:
        raise _refuse(where, f"format {value!r} cannot be enforced (only {sorted(FORMATS)})")
    elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
        raise _refuse(where, "only local references (#/...) are supported")


def schema_grammar(schema: Mapping[str, Any]) -> str:
    """GBNF whose sentences are JSON documents valid against ``schema``."""
    check_schema(schema)
    return _convert(orjson.dumps(schema).decode())  # key order is the output's order


@functools.lru_cache(maxsize=256)
def _convert(schema_json: str) -> str:
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError as exc:  # pragma: no cover - the llm extra brings it
        raise BadRequest(
            "response_format: needs llama-cpp-python on the server", param="response_format"
        ) from exc
    try:
        return json_schema_to_gbnf(schema_json)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _refuse("schema", f"cannot be turned into a grammar: {exc}") from exc


JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def response_format_grammar(value: object) -> str | None:
    """The grammar for an OpenAI ``response_format``; None for plain text."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _refuse("value", "must be an object with a type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_grammar(JSON_OBJECT_SCHEMA)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
            raise _refuse("json_schema", "must be an object with a `schema` object")
        return schema_grammar(spec.get("schema") or JSON_OBJECT_SCHEMA)
    raise _refuse("type", f"must be text, json_object or json_schema, got {kind!r}")
