"""Engine scheduling on a fake counting backend: positions, chunked prefill, prefix
sharing, KV exhaustion, backend failures, EOS handling."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fake_backend import FakeBackend
from llm_helpers import run, text_of

from modelhost.errors import PredictFailed
from modelhost.llm.engine import LLMEngine
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import TokenStream

pytestmark = pytest.mark.anyio


def counting(start: int, n: int, vocab: int = 32) -> list[int]:
    return [(start + i) % vocab for i in range(1, n + 1)]


async def _decoding_in_slot_0(engine: LLMEngine) -> TokenStream:
    """A request that keeps decoding (in slot 0) until it is closed."""
    live = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    decoding = await engine.generate([1, 2], live)
    await decoding.__anext__()
    return decoding


async def test_chunked_prefill_keeps_positions_and_streams_running_sequences() -> None:
    backend = FakeBackend(max_seqs=4)
    engine = LLMEngine(backend, prefill_chunk=8)
    try:
        short = [3, 4, 5]
        long = [7] * 40 + [9]
        first = await engine.generate(short, SamplingParams(temperature=0))
        assert (await first.__anext__()).token_id == 6
        results = await asyncio.gather(
            run(engine, long, temperature=0, max_tokens=5),
            run(engine, [20, 21], temperature=0, max_tokens=5),
        )
        assert [e.token_id for e in results[0]] == counting(9, 5)
        assert [e.token_id for e in results[1]] == counting(21, 5)
        assert max(backend.batches) <= 8 + 4  # a prefill chunk plus decode tokens
        await first.aclose()
    finally:
        engine.close()


async def test_a_short_prompt_is_prefilled_before_a_long_one_ends() -> None:
    """The prompt budget goes to the prompt with the fewest tokens left: a short chat
    arriving while a long prompt is prefilled in chunks does not wait for its last chunk."""
    backend = FakeBackend(max_seqs=4)
    backend.step_delay = 0.02  # the long prompt takes 8 steps: ~160 ms to get in behind it
    engine = LLMEngine(backend, prefill_chunk=8)
    firsts: list[str] = []

    async def first_token(prompt: list[int], name: str) -> None:
        stream = await engine.generate(prompt, SamplingParams(temperature=0, max_tokens=1))
        async for _ in stream:
            firsts.append(name)

    try:
        long = asyncio.create_task(first_token([7] * 60 + [9], "long"))
        while not backend.batches:  # the long prompt's first chunk is in
            await asyncio.sleep(0.001)
        await first_token([20, 21], "short")
        await long
        assert firsts == ["short", "long"]
    finally:
        engine.close()


async def test_a_waiting_prompt_below_a_fed_slot_rides_along_with_one_token() -> None:
    """A prompt that gets none of the step's prompt budget, in a slot below one that is
    fed, is fed one token anyway: llama.cpp computes a batch over separate KV streams in
    one pass per run of consecutive sequence ids, and a skipped slot would split the run."""
    backend = FakeBackend(max_seqs=4)
    backend.step_delay = 0.01
    engine = LLMEngine(backend, prefill_chunk=8)
    try:
        decoding = await _decoding_in_slot_0(engine)
        long = asyncio.create_task(run(engine, [3] * 200 + [4], temperature=0, max_tokens=1))
        while not any(1 in ids for ids in backend.seq_batches):  # slot 1's first chunk is in
            await asyncio.sleep(0.001)
        await run(engine, [5] * 19 + [6], temperature=0, max_tokens=1)  # slot 2: fewer left
        await long
        await decoding.aclose()
        shared = [ids for ids in backend.seq_batches if ids.count(2) == 8]
        assert shared, "the short prompt got the whole budget in some step"
        assert all(ids.count(1) == 1 and ids.count(0) == 1 for ids in shared)
    finally:
        engine.close()


async def test_prompts_fill_what_the_decode_tokens_leave_of_a_step() -> None:
    """With one request decoding, a long prompt goes in chunks of ``max_batch_tokens - 1``:
    every step but the prompt's last is a full batch (whole micro-batches in llama.cpp)."""
    backend = FakeBackend(max_seqs=4)
    backend.max_batch_tokens = 16
    backend.step_delay = 0.002
    engine = LLMEngine(backend, prefill_chunk=64)
    try:
        decoding = await _decoding_in_slot_0(engine)
        events = await run(engine, [3] * 60 + [4], temperature=0, max_tokens=2)
        assert [e.token_id for e in events] == counting(4, 2)
        await decoding.aclose()
        prompt_steps = [ids for ids in backend.seq_batches if 1 in ids]
        assert [ids.count(1) for ids in prompt_steps] == [15, 15, 15, 15, 1, 1]
        assert all(len(ids) == 16 for ids in prompt_steps[:4])
    finally:
        engine.close()


async def test_one_token_rides_along_within_the_batch() -> None:
    """Prompts that ride along with one token take it from the fed chunks: no step grows
    past ``max_batch_tokens``, and every prompt still gets in."""
    backend = FakeBackend(max_seqs=4)
    backend.max_batch_tokens = 8
    backend.step_delay = 0.002
    engine = LLMEngine(backend, prefill_chunk=64)
    try:
        prompts = [[5] * 30 + [6], [7] * 3 + [8], [9] * 20 + [10], [11] * 2 + [12]]
        results = await asyncio.gather(
            *(run(engine, p, temperature=0, max_tokens=2) for p in prompts)
        )
        assert [[e.token_id for e in r] for r in results] == [counting(p[-1], 2) for p in prompts]
        assert max(backend.batches) <= 8
    finally:
        engine.close()


async def test_decode_steps_go_in_slot_order_whatever_the_admission_order() -> None:
    """A request that takes a freed lower slot decodes in slot order with the older ones:
    llama.cpp computes a run of consecutive sequence ids over separate KV streams in one
    pass, and the decode-only steps are built on their own fast path."""
    backend = FakeBackend(max_seqs=3)
    backend.step_delay = 0.002
    engine = LLMEngine(backend)
    live = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    try:
        first = await engine.generate([1, 2], live)
        await first.__anext__()
        others = [await engine.generate(p, live) for p in ([3, 4], [5, 6])]
        for stream in others:
            await stream.__anext__()
        await first.aclose()  # slot 0 is free; the next request is admitted last but takes it
        events = await run(engine, [9, 10], temperature=0, max_tokens=5)
        assert [e.token_id for e in events] == counting(10, 5)
        for stream in others:
            assert (await stream.__anext__()).finish_reason is None
            await stream.aclose()
        assert [0, 1, 2] in backend.seq_batches  # the late request beside the older ones
        assert all(ids == sorted(ids) for ids in backend.seq_batches)
    finally:
        engine.close()


async def test_shared_prefix_is_copied_not_recomputed() -> None:
    backend = FakeBackend(max_seqs=4)
    backend.step_delay = 0.005
    engine = LLMEngine(backend, min_prefix_reuse=4)
    try:
        system = list(range(1, 21))
        live = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        first = await engine.generate(system + [25], live)  # keeps running: a live source
        await first.__anext__()
        events = await run(engine, system + [26, 27], temperature=0, max_tokens=3)
        assert [e.token_id for e in events] == counting(27, 3)
        assert engine.stats.prefix_hits == 1 and engine.stats.prefix_tokens_reused == 20
        assert backend.copies and backend.copies[-1][2] == 20
        await first.aclose()
    finally:
        engine.close()


async def test_one_request_a_step_keeps_a_copy_of_the_cache_it_forks_from() -> None:
    """Requests after the same system prompt arriving one at a time: each keeps a copy of the
    cache it takes in place, so every question stays cached and is answered from cache when
    it comes again. A burst admitted in one step then copies once: the rest take idle caches
    in place."""
    backend = FakeBackend(max_seqs=6)
    engine = LLMEngine(backend, min_prefix_reuse=4)
    system = list(range(1, 21))
    questions = [system + [22 + i, 9] for i in range(3)]
    try:
        for prompt in questions:
            await run(engine, prompt, temperature=0, max_tokens=3)
        assert len(backend.copies) == 2  # the second and third kept a copy of the cache taken
        for prompt in questions:  # asked again: one token computed, the rest from cache
            before = engine.stats.prefix_tokens_reused
            await run(engine, prompt, temperature=0, max_tokens=3)
            assert engine.stats.prefix_tokens_reused - before == len(prompt) - 1
        copies = len(backend.copies)

        backend.gate = threading.Event()
        live = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        holder = await engine.generate([30, 31], live)  # its decode waits at the gate
        assert await asyncio.to_thread(backend.in_decode.wait, 10)
        params = SamplingParams(temperature=0, max_tokens=3)
        streams = [await engine.generate(system + [26 + i, 9], params) for i in range(3)]
        backend.gate.set()
        for stream in streams:
            assert [e.token_id async for e in stream] == counting(9, 3)
        assert len(backend.copies) - copies == 1
        await holder.aclose()
    finally:
        engine.close()


async def test_a_request_sent_when_another_ends_joins_the_next_step() -> None:
    """A client sending its next request as soon as the last one ended: after the finishing
    step the loop waits for it (``follower_wait_ms``), so its prompt goes into the very next
    decode beside the running request's token instead of the one after."""
    backend = FakeBackend(max_seqs=4)
    backend.step_delay = 0.002
    engine = LLMEngine(backend, follower_wait_ms=60_000)  # the wait ends when it arrives
    try:
        holder = await _decoding_in_slot_0(engine)
        events = await run(engine, [5, 6, 7], temperature=0, max_tokens=2)
        assert [e.token_id for e in events] == counting(7, 2)
        finished_at = len(backend.batches)
        params = SamplingParams(temperature=0, max_tokens=2)
        follower = await engine.generate([9, 10, 11, 12, 13], params)
        assert [e.token_id async for e in follower] == counting(13, 2)
        assert backend.batches[finished_at] == 1 + 5
        await holder.aclose()
    finally:
        engine.close()


async def test_same_prompt_again_reuses_all_but_the_last_token() -> None:
    engine = LLMEngine(FakeBackend(max_seqs=2), min_prefix_reuse=4)
    try:
        prompt = list(range(1, 11))
        a = await run(engine, prompt, temperature=0, max_tokens=4)
        b = await run(engine, prompt, temperature=0, max_tokens=4)
        assert [e.token_id for e in a] == [e.token_id for e in b] == counting(10, 4)
        assert engine.stats.prefix_tokens_reused == len(prompt) - 1
    finally:
        engine.close()


@pytest.mark.parametrize(("separate_streams", "oldest_kept"), [(True, True), (False, False)])
async def test_idle_caches_kept_by_default(separate_streams: bool, oldest_kept: bool) -> None:
    """With a KV stream per slot every finished request stays cached (its cells are its own
    slot's: dropping them makes room for nobody); in one shared buffer idle caches are held
    to a quarter of it (400 of 1,600 cells here: one 300-token prompt)."""
    backend = FakeBackend(max_seqs=4, kv_capacity=1600, seq_ctx=400)
    backend.separate_streams = separate_streams
    engine = LLMEngine(backend)
    prompts = [[k] + counting(k, 299) for k in range(4)]
    try:
        for prompt in prompts:
            await run(engine, prompt, temperature=0, max_tokens=1)

        async def from_cache(prompt: list[int]) -> bool:
            before = engine.stats.prefix_tokens_reused
            await run(engine, prompt, temperature=0, max_tokens=1)
            return engine.stats.prefix_tokens_reused - before == len(prompt) - 1

        assert await from_cache(prompts[-1])  # the newest: kept either way
        assert await from_cache(prompts[0]) is oldest_kept
    finally:
        engine.close()


async def test_kv_exhaustion_ends_the_longest_sequence() -> None:
    backend = FakeBackend(max_seqs=2, kv_capacity=60)
    engine = LLMEngine(backend, prefix_cache_tokens=0)
    try:
        results = await asyncio.gather(
            run(engine, [1] * 20, temperature=0, max_tokens=100, ignore_eos=True),
            run(engine, [2] * 5, temperature=0, max_tokens=20, ignore_eos=True),
        )
        assert results[0][-1].finish_reason == "length" and len(results[0]) < 100
        assert len(results[1]) == 20
        assert engine.stats.preemptions == 1
    finally:
        engine.close()


async def test_backend_failure_fails_running_requests_only() -> None:
    backend = FakeBackend()
    engine = LLMEngine(backend)
    try:
        backend.fail_next = True
        with pytest.raises(PredictFailed):
            await run(engine, [1, 2, 3], temperature=0, max_tokens=3)
        assert len(await run(engine, [1, 2, 3], temperature=0, max_tokens=3)) == 3
        assert engine.stats.in_flight == 0
    finally:
        engine.close()


async def test_eos_stops_unless_ignored() -> None:
    engine = LLMEngine(FakeBackend())
    try:
        events = await run(engine, [29], temperature=0, max_tokens=10)
        assert [e.token_id for e in events] == [30, 31, 0]
        assert events[-1].finish_reason == "stop" and text_of(events) == "ef"
        ignored = await run(engine, [29], temperature=0, max_tokens=5, ignore_eos=True)
        assert [e.token_id for e in ignored] == [30, 31, 0, 1, 2]
        assert ignored[-1].finish_reason == "length"
    finally:
        engine.close()


async def test_context_limit_caps_max_tokens() -> None:
    engine = LLMEngine(FakeBackend(seq_ctx=16))
    try:
        events = await run(engine, [1] * 10, temperature=0, max_tokens=100, ignore_eos=True)
        assert len(events) == 6 and events[-1].finish_reason == "length"
    finally:
        engine.close()


async def test_closing_the_engine_fails_waiting_requests() -> None:
    backend = FakeBackend(max_seqs=1)
    backend.step_delay = 0.005  # the running request outlives the close below
    engine = LLMEngine(backend, max_queue=2)
    endless = SamplingParams(temperature=0, ignore_eos=True)
    running = await engine.generate([1], endless)
    await running.__anext__()
    waiting = await engine.generate([2], endless)
    await asyncio.to_thread(engine.close)
    with pytest.raises(Exception, match="stopped"):
        async for _ in waiting:
            pass
    await running.aclose()
