"""The engine metrics in vLLM's names (`llm/metrics.py`), on the real demo model."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from modelhost.llm.engine import LLMEngine
from modelhost.llm.metrics import LLMMetrics
from modelhost.llm.params import SamplingParams
from modelhost.llm.results import JSONResult, StreamResult
from modelhost.llm.service import LLMService

pytestmark = pytest.mark.anyio
_names = itertools.count()


def _service(engine: LLMEngine) -> LLMService:
    # a model name of its own per test: the metric objects are shared by the process
    return LLMService(engine, f"metrics-test-{next(_names)}")


def _value(metrics: LLMMetrics, family: str, sample: str, **labels: str) -> float:
    metric = getattr(metrics.families, family)
    total = 0.0
    for collected in metric.collect():
        for s in collected.samples:
            mine = s.labels["model_name"] == metrics.labels[0]
            if s.name == sample and mine and labels.items() <= s.labels.items():
                total += s.value
    return total


def _chat(stream: bool, max_tokens: int = 6) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "ignore_eos": True,
    }


async def _settle() -> None:
    for _ in range(3):  # gauges are refreshed on the loop's next turn
        await asyncio.sleep(0)


async def test_finished_requests_tokens_and_latencies(engine: LLMEngine) -> None:
    service = _service(engine)
    m = service.metrics
    first = await service.handle("POST", "v1/chat/completions", _chat(False))
    assert isinstance(first, JSONResult) and first.status == 200, first
    second = await service.handle("POST", "v1/chat/completions", _chat(True))
    assert isinstance(second, StreamResult)
    _ = [chunk async for chunk in second.chunks]
    await _settle()
    assert _value(m, "success", "vllm:request_success_total", finished_reason="length") == 2
    assert _value(m, "ttft", "vllm:time_to_first_token_seconds_count") == 2
    assert _value(m, "itl", "vllm:inter_token_latency_seconds_count") == 2 * 5
    assert _value(m, "e2e", "vllm:e2e_request_latency_seconds_count") == 2
    assert _value(m, "tpot", "vllm:request_time_per_output_token_seconds_count") == 2
    assert _value(m, "generation_tokens", "vllm:generation_tokens_total") == 12
    assert _value(m, "prompt_tokens", "vllm:prompt_tokens_total") > 2 * 5
    assert _value(m, "running", "vllm:num_requests_running") == 0
    assert _value(m, "waiting", "vllm:num_requests_waiting") == 0
    assert 0 < _value(m, "kv_usage", "vllm:kv_cache_usage_perc") <= 1


async def test_errors_answered_as_values_are_counted(engine: LLMEngine) -> None:
    service = _service(engine)
    bad = await service.handle("POST", "v1/chat/completions", {"messages": "nope"})
    missing = await service.handle("POST", "v1/embeddingz", {})
    assert isinstance(bad, JSONResult) and bad.status == 400
    assert isinstance(missing, JSONResult) and missing.status == 404
    m = service.metrics
    assert _value(m, "errors", "modelhost_llm_request_errors_total", status="400") == 1
    assert _value(m, "errors", "modelhost_llm_request_errors_total", status="404") == 1
    assert _value(m, "success", "vllm:request_success_total") == 0


async def test_a_stream_closed_early_counts_as_abort(engine: LLMEngine) -> None:
    service = _service(engine)
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    stream = await service.engine.generate(engine.backend.tokenize("Hello"), params)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()
    await _settle()
    m = service.metrics
    assert _value(m, "success", "vllm:request_success_total", finished_reason="abort") == 1
    assert _value(m, "generation_tokens", "vllm:generation_tokens_total") == 3
    assert _value(m, "running", "vllm:num_requests_running") == 0


async def test_prefix_cache_and_kept_copies_follow_the_engine(engine: LLMEngine) -> None:
    service = _service(engine)
    m = service.metrics
    system = f"You answer for test {m.labels[0]}; in one word, and politely, always. " * 4
    before = engine.stats
    for question in ("Name a colour.", "Name a fruit.", "Name a colour."):
        body = _chat(False) | {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
        }
        answer = await service.handle("POST", "v1/chat/completions", body)
        assert isinstance(answer, JSONResult) and answer.status == 200, answer
    await _settle()
    after = engine.stats
    hits = _value(m, "prefix_hits", "vllm:prefix_cache_hits_total")
    queries = _value(m, "prefix_queries", "vllm:prefix_cache_queries_total")
    # the second question reuses the system prompt, the third its whole earlier prompt
    assert hits == after.prefix_tokens_reused - before.prefix_tokens_reused
    assert hits > 2 * 40
    # every prompt token is looked up once: computed or found
    assert queries == _value(m, "prompt_tokens", "vllm:prompt_tokens_total") > hits
    copies = _value(m, "prefix_copies", "modelhost_llm_prefix_cache_copies_total")
    assert copies == after.prefix_copies - before.prefix_copies >= 1  # the fruit forked


async def test_follower_waits_are_counted_caught_or_not(engine: LLMEngine) -> None:
    service = _service(engine)
    m = service.metrics
    before = engine.stats

    async def chat(tokens: int) -> None:
        answer = await service.handle("POST", "v1/chat/completions", _chat(False, tokens))
        assert isinstance(answer, JSONResult) and answer.status == 200, answer

    async def short_then_another() -> None:
        await chat(2)
        await chat(2)  # sent when the first ends, while the long one runs

    await asyncio.gather(chat(40), short_then_another())
    await _settle()
    after = engine.stats
    caught = _value(m, "follower_waits", "modelhost_llm_follower_waits_total", caught="true")
    missed = _value(m, "follower_waits", "modelhost_llm_follower_waits_total", caught="false")
    assert caught == after.follower_catches - before.follower_catches
    assert caught + missed == after.follower_waits - before.follower_waits >= 1


def test_a_histogram_batch_counts_what_observe_would() -> None:
    from prometheus_client import Histogram

    from modelhost.llm.metrics import FLUSH_EVERY, ITL_BUCKETS, HistogramBatch

    def child(name: str) -> Any:
        return Histogram(name, "x", ["m"], buckets=ITL_BUCKETS, registry=None).labels("a")

    direct, batched = child("direct_seconds"), child("batched_seconds")
    batch = HistogramBatch(batched)
    # on a bound, between bounds, below the first, above the last (+Inf)
    amounts = [0.01, 0.0101, 0.001, 0.3, 0.30001, 79.0, 80.0, 500.0, 0.0]
    for amount in amounts:
        direct.observe(amount)
        batch.observe(amount)

    def samples(h: Any) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.split("_", 1)[1], s.labels, s.value)
            for m in h.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        ]

    assert all(value == 0 for _, _, value in samples(batched))  # nothing written yet
    batch.flush()
    assert samples(batched) == samples(direct)
    for _ in range(FLUSH_EVERY):  # a full batch is written without a flush
        batch.observe(0.02)
    count = [v for name, _, v in samples(batched) if name == "seconds_count"]
    assert count == [len(amounts) + FLUSH_EVERY]
