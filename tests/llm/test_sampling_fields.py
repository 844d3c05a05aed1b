"""logprobs, n > 1, logit_bias, seed, tokenize / detokenize on the real demo model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import as_json, chat, chat_stream, sse, streamed_text

from modelhost.llm.engine import LLMEngine
from modelhost.llm.service import LLMService

pytestmark = pytest.mark.anyio

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def service(engine: LLMEngine) -> Iterator[LLMService]:
    yield LLMService(engine, "smol")


async def test_chat_logprobs_streamed_sum_equals_whole(service: LLMService) -> None:
    request: dict[str, Any] = {
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = await chat(service, request)
    entries = whole["choices"][0]["logprobs"]["content"]
    assert len(entries) == whole["usage"]["completion_tokens"] == 16
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert top[0]["token"] == entry["token"]  # greedy: the best one was taken
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
    chunks = await chat_stream(service, request)
    streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]  # fmt: skip
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]
    assert math.isclose(
        sum(e["logprob"] for e in streamed), sum(e["logprob"] for e in entries), abs_tol=1e-3
    )
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]


async def test_completion_logprobs_shape_streamed_and_not(service: LLMService) -> None:
    request = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0,
               "logprobs": 2}  # fmt: skip
    whole = as_json(await service.handle("POST", "v1/completions", request))
    choice = whole["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0 and all(len(t) == 2 for t in lp["top_logprobs"])
    chunks = await sse(await service.handle("POST", "v1/completions", {**request, "stream": True}))
    streamed = [v for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for v in c["choices"][0]["logprobs"]["token_logprobs"]]  # fmt: skip
    assert math.isclose(sum(streamed), sum(lp["token_logprobs"]), abs_tol=1e-3)


async def test_n_choices_share_the_prompt_with_exact_usage(
    service: LLMService, engine: LLMEngine
) -> None:
    before = engine.stats
    request = {"messages": QUESTION, "n": 3, "temperature": 1.0, "seed": 5, "max_tokens": 10,
               "ignore_eos": True}  # fmt: skip
    whole = await chat(service, request)
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2]
    after = engine.stats
    prompt = whole["usage"]["prompt_tokens"]
    assert whole["usage"]["completion_tokens"] == 30
    assert whole["usage"]["total_tokens"] == prompt + 30
    # the prompt is computed once; choices 2 and 3 copy its KV and compute one token each
    assert after.prefix_hits - before.prefix_hits >= 2
    assert after.prefill_tokens - before.prefill_tokens <= prompt + 2
    texts = {c["message"]["content"] for c in whole["choices"]}
    assert len(texts) > 1  # each choice samples with its own seed
    chunks = await chat_stream(service, {**request, "stream_options": {"include_usage": True}})
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1, 2}
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 3
    streamed = dict(chunks[-1]["usage"])
    # the same prompt again: all of it but its last token comes from the prefix cache
    assert streamed.pop("prompt_tokens_details") == {"cached_tokens": prompt - 1}
    assert streamed == {k: v for k, v in whole["usage"].items() if k != "prompt_tokens_details"}
    # (not compared with the texts above: sampled at temperature 1, a choice may diverge
    # once the batch's shape changes the logits' last bits)
    assert all(streamed_text(chunks, i) for i in range(3))


async def test_seed_reproduces_a_sampled_answer(service: LLMService) -> None:
    request = {"messages": QUESTION, "temperature": 1.0, "seed": 1234, "max_tokens": 16}
    first, second = await chat(service, request), await chat(service, request)
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


async def test_logit_bias_bans_and_forces_tokens(service: LLMService) -> None:
    request: dict[str, Any] = {"messages": QUESTION, "temperature": 0, "max_tokens": 4,
                               "logprobs": True}  # fmt: skip
    plain = await chat(service, request)
    first = plain["choices"][0]["logprobs"]["content"][0]["token"]
    tokens = as_json(await service.handle("POST", "tokenize", {"content": first}))["tokens"]
    banned = await chat(service, {**request, "logit_bias": {str(tokens[0]): -100}})
    assert banned["choices"][0]["logprobs"]["content"][0]["token"] != first
    forced_id = as_json(await service.handle("POST", "tokenize", {"content": " zebra"}))["tokens"]
    forced = await chat(service, {**request, "logit_bias": {str(forced_id[0]): 100}})
    pieces = [e["token"] for e in forced["choices"][0]["logprobs"]["content"]]
    assert set(pieces) == {as_json(await service.handle(
        "POST", "detokenize", {"tokens": forced_id[:1]}))["content"]}  # fmt: skip


async def test_tokenize_and_detokenize_round_trip(service: LLMService) -> None:
    text = "Hello world, naïve café!"
    tokens = as_json(await service.handle("POST", "tokenize", {"content": text}))["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    back = as_json(await service.handle("POST", "v1/detokenize", {"tokens": tokens}))
    assert back["content"] == text
    special = as_json(
        await service.handle("POST", "tokenize", {"content": "<|im_start|>", "add_special": True})
    )["tokens"]
    assert len(special) == 1
    bad = await service.handle("POST", "detokenize", {"tokens": [10**9]})
    assert bad.status == 400  # type: ignore[union-attr]
