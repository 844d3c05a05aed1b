"""The engine on the real demo model (SmolLM2-135M through llama.cpp)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from llm_helpers import SYSTEM, chat_tokens, first_event, run, text_of

from modelhost.errors import BadRequest, TooManyRequests
from modelhost.llm.engine import LLMEngine
from modelhost.llm.params import SamplingParams

pytestmark = pytest.mark.anyio

QUESTIONS = [
    "Who is Einstein?",
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "How do airplanes fly?",
    "Name three fruits.",
    "What is a computer?",
]


async def test_answers_a_chat_prompt(engine: LLMEngine, backend: Any) -> None:
    prompt = chat_tokens(backend, "What is the capital of France?", system=SYSTEM)
    events = await run(engine, prompt, temperature=0, max_tokens=24)
    assert "Paris" in text_of(events)
    last = events[-1]
    assert last.finish_reason in {"stop", "length"}
    assert last.completion_tokens == len(events)
    assert all(e.finish_reason is None for e in events[:-1])


async def test_32_concurrent_requests_get_exactly_max_tokens(
    engine: LLMEngine, backend: Any
) -> None:
    prompts = [chat_tokens(backend, f"Count to {i}.") for i in range(32)]
    results = await asyncio.gather(
        *(run(engine, p, temperature=0, max_tokens=8, ignore_eos=True) for p in prompts)
    )
    for events in results:
        assert len(events) == 8
        assert events[-1].completion_tokens == 8
        assert events[-1].finish_reason == "length"
    assert engine.stats.running == 0
    assert engine.stats.in_flight == 0


async def test_greedy_output_matches_alone_and_in_a_batch(engine: LLMEngine, backend: Any) -> None:
    """Batch invariance at temperature 0. llama.cpp's CPU kernels do not promise bitwise
    equal logits for different batch shapes (matmul paths differ with the number of rows;
    a unified KV attends over a larger, masked cache), so long greedy continuations can
    drift apart after a few dozen tokens (seen here: first difference at token ~29 without
    prefix sharing). The first 16 tokens must agree."""
    prompts = [chat_tokens(backend, q) for q in QUESTIONS]
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 16, "ignore_eos": True}
    alone = await run(engine, prompts[0], **params)
    batch = await asyncio.gather(*(run(engine, p, **params) for p in prompts))
    assert [e.token_id for e in batch[0]] == [e.token_id for e in alone]


async def test_cancelling_frees_the_slot_at_once(backend: Any) -> None:
    """With both slots busy, cancelling one request lets the waiting one start on the
    engine's next step. Measured in engine steps, not seconds: this machine is shared and
    one step can take from 20 ms to 500 ms."""
    engine = LLMEngine(backend, max_seqs=2, max_queue=4)
    try:
        params = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)
        prompt = chat_tokens(backend, "Tell me a long story.")
        first = await engine.generate(prompt, params)
        second = await engine.generate(prompt, params)
        await first_event(first)
        await first_event(second)
        third = await engine.generate(chat_tokens(backend, "Who is Einstein?"), params)
        waiting = asyncio.ensure_future(first_event(third))
        # The scheduler counts a request as waiting once its loop has taken it in: poll for
        # that (a loaded machine takes longer) instead of sleeping a fixed time.
        deadline = time.monotonic() + 30
        while engine.stats.waiting != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not waiting.done()  # both slots are busy
        assert engine.stats.running == 2 and engine.stats.waiting == 1
        steps_before = engine.stats.steps
        await first.aclose()
        await asyncio.wait_for(waiting, timeout=10)
        # the step running when we cancelled, then the one that prefills the newcomer
        assert engine.stats.steps - steps_before <= 3
        await second.__anext__()  # the other request keeps streaming
        await second.aclose()
        await third.aclose()
    finally:
        engine.close()


async def test_a_cancelled_consumer_task_cancels_its_request(backend: Any) -> None:
    engine = LLMEngine(backend, max_seqs=1, max_queue=1)
    try:
        params = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)

        async def consume() -> None:
            async for _ in await engine.generate(chat_tokens(backend, "Hi"), params):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events = await asyncio.wait_for(
            run(engine, chat_tokens(backend, "Hello"), temperature=0, max_tokens=3), 5
        )
        assert len(events) == 3
        assert engine.stats.in_flight == 0
    finally:
        engine.close()


async def test_full_queue_refuses_at_once(backend: Any) -> None:
    engine = LLMEngine(backend, max_seqs=1, max_queue=1)
    try:
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        prompt = chat_tokens(backend, "Hi")
        running = await engine.generate(prompt, params)
        queued = await engine.generate(prompt, params)
        started = time.perf_counter()
        with pytest.raises(TooManyRequests) as info:
            await engine.generate(prompt, params)
        assert time.perf_counter() - started < 0.5  # no waiting on the engine
        assert info.value.retry_after > 0
        await running.aclose()
        await queued.aclose()
        events = await run(engine, prompt, temperature=0, max_tokens=2)  # room again
        assert len(events) == 2
    finally:
        engine.close()


async def test_stop_strings_are_not_emitted(engine: LLMEngine, backend: Any) -> None:
    prompt = chat_tokens(backend, "Who is Einstein?")
    full = text_of(await run(engine, prompt, temperature=0, max_tokens=40))
    words = full.split()
    assert len(words) > 6
    stop = f"{words[3]} {words[4]}"  # spans several tokens
    events = await run(engine, prompt, temperature=0, max_tokens=40, stop=[stop])
    text = text_of(events)
    assert events[-1].finish_reason == "stop"
    assert stop not in text
    assert full.startswith(text) and full[len(text) :].startswith(stop)


async def test_seed_reproduces_sampling(engine: LLMEngine, backend: Any) -> None:
    prompt = chat_tokens(backend, "Write a poem about cats.")
    params: dict[str, Any] = {
        "temperature": 1.0,
        "top_p": 0.95,
        "max_tokens": 24,
        "ignore_eos": True,
    }
    a = await run(engine, prompt, seed=1234, **params)
    b = await run(engine, prompt, seed=1234, **params)
    c = await run(engine, prompt, seed=99, **params)
    assert [e.token_id for e in a] == [e.token_id for e in b]
    assert [e.token_id for e in a] != [e.token_id for e in c]


async def test_same_system_prompt_reuses_the_cached_prefix(engine: LLMEngine, backend: Any) -> None:
    first = chat_tokens(backend, "Who is Einstein?", system=SYSTEM)
    second = chat_tokens(backend, "What is the capital of France?", system=SYSTEM)
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    before = engine.stats
    await run(engine, first, temperature=0, max_tokens=4)
    events = await run(engine, second, temperature=0, max_tokens=12)
    after = engine.stats
    assert after.prefix_hits == before.prefix_hits + 1
    assert after.prefix_tokens_reused - before.prefix_tokens_reused == shared
    assert after.prefill_tokens - before.prefill_tokens == len(first) + len(second) - shared
    assert "Paris" in text_of(events)


async def test_a_question_asked_again_after_another_is_answered_from_cache(backend: Any) -> None:
    """Another question after the same system prompt copies the prefix out instead of taking
    the first question's cache in place, so the first question, asked again, computes one
    token and answers the same."""
    engine = LLMEngine(backend, max_seqs=4)
    try:
        first = chat_tokens(backend, "Name three primary colours.", system=SYSTEM)
        other = chat_tokens(backend, "What is two plus two?", system=SYSTEM)
        answer = text_of(await run(engine, first, temperature=0, max_tokens=12))
        await run(engine, other, temperature=0, max_tokens=4)
        before = engine.stats
        again = text_of(await run(engine, first, temperature=0, max_tokens=12))
        after = engine.stats
        assert after.prefix_tokens_reused - before.prefix_tokens_reused == len(first) - 1
        assert after.prefill_tokens - before.prefill_tokens == 1
        assert again == answer
    finally:
        engine.close()


async def test_streamed_text_equals_decoded_tokens(engine: LLMEngine, backend: Any) -> None:
    prompt = chat_tokens(backend, "Say 'thank you' in Japanese, Chinese and with emojis.")
    events = await run(engine, prompt, temperature=0, max_tokens=48, ignore_eos=True)
    raw = b"".join(backend.token_bytes(e.token_id) for e in events)
    assert text_of(events) == raw.decode("utf-8", errors="replace")


async def test_prompt_longer_than_the_context_is_refused(engine: LLMEngine) -> None:
    with pytest.raises(BadRequest):
        await engine.generate([1] * engine.backend.seq_ctx, SamplingParams())
    with pytest.raises(BadRequest):
        await engine.generate([], SamplingParams())


async def test_no_prefix_cache_budget_means_no_reuse_after_release(backend: Any) -> None:
    engine = LLMEngine(backend, max_seqs=4, prefix_cache_tokens=0)
    try:
        await run(engine, chat_tokens(backend, "Who is Einstein?", system=SYSTEM), max_tokens=2)
        await run(engine, chat_tokens(backend, "Why?", system=SYSTEM), max_tokens=2)
        assert engine.stats.prefix_hits == 0
    finally:
        engine.close()
