"""``response_format`` enforced by grammar on the real demo model, streamed and not."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from service_helpers import chat, chat_error, chat_stream, streamed_text

from modelhost.errors import BadRequest
from modelhost.llm.engine import LLMEngine
from modelhost.llm.params import SamplingParams
from modelhost.llm.service import LLMService
from modelhost.llm.structured import check_schema, response_format_grammar

pytestmark = pytest.mark.anyio

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "member"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
SUBJECTS = [
    "a famous scientist", "a football player", "your neighbour", "a pirate", "a teacher",
    "a baker", "an astronaut", "a child", "a king", "a poet", "a doctor", "a farmer",
    "a musician", "a painter", "a cat owner", "a chess champion", "a pilot", "a chef",
    "a student", "a grandmother",
]  # fmt: skip
STYLES = ["Describe", "Invent", "Give me", "Write about", "Make up"]


def prompts(count: int) -> list[str]:
    rng = random.Random(12)
    return [
        f"{rng.choice(STYLES)} {SUBJECTS[i % len(SUBJECTS)]} as JSON with name, age and "
        f"membership (#{i})."
        for i in range(count)
    ]


@pytest.fixture
def big_engine(backend: Any) -> Iterator[LLMEngine]:
    eng = LLMEngine(backend, max_seqs=32, max_queue=256)
    yield eng
    eng.close()


def body(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "response_format": FORMAT,
        "temperature": 0.7,
        "seed": 1,
        "max_tokens": 200,  # above the grammar's longest answer: never cut by length
        **extra,
    }


@pytest.mark.slow
async def test_100_prompts_validate_streamed_and_not(big_engine: LLMEngine) -> None:
    """Sampled at temperature 0.7 so that the outputs differ; free requests run in the same
    batch. Every output parses and validates, streamed or not. About 5,000 tokens: ~30 s
    on a quiet 2-core machine (at ~200-350 tokens/s), minutes when it is shared."""
    service = LLMService(big_engine, "smol")
    questions = prompts(100)
    free = chat(service, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16})
    whole = asyncio.gather(*(chat(service, body(q)) for q in questions))
    streamed = asyncio.gather(*(chat_stream(service, body(q)) for q in questions))
    answers, streams, plain = await asyncio.gather(whole, streamed, free)
    texts = [a["choices"][0]["message"]["content"] for a in answers]
    texts += [streamed_text(chunks) for chunks in streams]
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)
    assert len(set(texts)) > 20  # varied, not one answer repeated
    assert plain["choices"][0]["message"]["content"]


async def test_json_object_mode(engine: LLMEngine) -> None:
    service = LLMService(engine, "smol")
    answer = await chat(
        service,
        {
            "messages": [
                {"role": "user", "content": 'Reply with a JSON object with the key "answer": 2+2?'}
            ],
            "response_format": {"type": "json_object"},
            "temperature": 0,
            "max_tokens": 64,
        },
    )
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


async def test_grammar_and_free_requests_share_a_batch(engine: LLMEngine, backend: Any) -> None:
    """A free greedy request gives the same tokens beside constrained ones as alone."""
    prompt = backend.tokenize(backend.render_chat([{"role": "user", "content": "Hi there"}]))
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = [e.token_id async for e in await engine.generate(prompt, free)]
    grammar = response_format_grammar(FORMAT)
    constrained = SamplingParams(temperature=0, max_tokens=40, grammar=grammar)
    streams = [await engine.generate(prompt, constrained) for _ in range(3)]
    together = await engine.generate(prompt, free)
    tokens = [e.token_id async for e in together]
    texts = ["".join([e.text async for e in s]) for s in streams]
    assert tokens == alone
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "email"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "properties": {"a": {"$ref": "http://x/y"}}}, "$ref"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ],
)
async def test_constructs_we_cannot_enforce_are_400_naming_them(
    engine: LLMEngine, schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(BadRequest) as info:
        check_schema(schema)
    assert named in info.value.message
    error = await chat_error(
        LLMService(engine, "smol"),
        body("x", response_format={"type": "json_schema", "json_schema": {"schema": schema}}),
    )
    assert error["param"] == "response_format" and named in error["message"]


def test_annotations_and_references_pass() -> None:
    check_schema(
        {
            "title": "T",
            "description": "d",
            "$defs": {"p": {"type": "string", "enum": ["a", "b"]}},
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/p"}, "y": {"anyOf": [{"type": "null"}]}},
        }
    )


async def test_practicus_request_takes_response_format_in_kwargs(engine: LLMEngine) -> None:
    service = LLMService(engine, "smol")
    request = {
        "messages": [{"role": "human", "content": "Describe a teacher as JSON."}],
        "temperature": 0,
        "max_tokens": 200,  # above the grammar's longest answer: never cut by length
        "lang_model_kwargs": {"response_format": FORMAT},
    }
    result = await service.handle("POST", "", request)
    assert isinstance(result.body, dict)  # type: ignore[union-attr]
    jsonschema.validate(json.loads(result.body["content"]), PERSON)  # type: ignore[union-attr]
