"""LLM engine metrics in vLLM's names, so vLLM's Grafana dashboards work unchanged.

Labels `model_name` (the served name) and `engine` ("0"), as vLLM's. The gateway adds
`prefix`, `model`, `version` and `replica` when it renders them (`gateway/model_metrics.py`:
the worker writes them to its `PROMETHEUS_MULTIPROC_DIR`, it has no port of its own).

    vllm:time_to_first_token_seconds        histogram  generate() -> first token
    vllm:inter_token_latency_seconds        histogram  between two tokens of a request
    vllm:request_time_per_output_token_seconds  histogram  per request: decode time / tokens
    vllm:e2e_request_latency_seconds        histogram  generate() -> last token
    vllm:request_prompt_tokens / vllm:request_generation_tokens  histograms per request
    vllm:prompt_tokens_total, vllm:generation_tokens_total  counters
    vllm:request_success_total{finished_reason}  counter (stop, length, abort)
    vllm:num_requests_running / _waiting    gauges (waiting: admitted, no token yet)
    vllm:kv_cache_usage_perc                gauge, 0..1, where the engine can tell
    modelhost_llm_request_errors_total{status, type}  counter: errors answered as values
                                            (JSON error bodies) and streams failed midway
    vllm:prefix_cache_queries_total / vllm:prefix_cache_hits_total  counters: prompt tokens
                                            looked up in the prefix cache / found there
    vllm:num_preemptions_total              counter: requests put back to wait for KV room
    modelhost_llm_prefix_cache_copies_total counter: idle caches copied aside before a fork
                                            took them in place (`llm/slots.py`)
    modelhost_llm_follower_waits_total{caught}  counter: waits for requests following
                                            finished ones (`llm/followers.py`); caught="true"
                                            when one arrived during the wait

A request is metered by a `RequestMeter` that its `TokenStream` calls once per item; per
token that is a clock read and a count in a plain Python list (`HistogramBatch`), written
to the inter-token histogram when a request ends or `FLUSH_EVERY` tokens were counted
(cost measured with `bench/llm_metrics_cost.py`, see the README). Gauges change when a
request starts, gets its first token and ends, and the engine's own counters (`EngineStats`:
prefix cache, preemptions, follower waits) are copied when a request starts or ends: nothing
runs on a timer.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from modelhost.llm.front import EngineStats
from modelhost.llm.stream import TokenEvent, TokenStream

log = logging.getLogger(__name__)

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
LABELS = ("model_name", "engine")
# Inter-token latencies counted before they are written to the histogram (see HistogramBatch).
FLUSH_EVERY = 64


class _Families:
    """The metric objects of this process, made once: in multiprocess mode two objects of
    one name would overwrite each other's files. Not in prometheus_client's default
    registry (vLLM registers its own there)."""

    def __init__(self) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=None)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=None, multiprocess_mode="livesum")

        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Per request: seconds per output token after the first.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
            E2E_BUCKETS,
        )  # fmt: skip
        self.prompt_hist = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS
        )
        self.generation_hist = histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", TOKEN_BUCKETS
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", LABELS, registry=None
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens produced.", LABELS, registry=None
        )
        self.success = Counter(
            "vllm:request_success",
            "Requests finished, by finish reason (abort: the client went away).",
            [*LABELS, "finished_reason"],
            registry=None,
        )
        self.errors = Counter(
            "modelhost_llm_request_errors",
            "LLM requests answered with an error body, or whose stream failed midway.",
            [*LABELS, "status", "type"],
            registry=None,
        )
        self.running = gauge("vllm:num_requests_running", "Requests in the decode batch.")
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Requests admitted and waiting for a decode slot."
        )
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 %.")

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, [*LABELS, *labels], registry=None)

        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache (not computed)."
        )
        self.preemptions = counter(
            "vllm:num_preemptions", "Requests put back to wait until KV room frees up."
        )
        self.prefix_copies = counter(
            "modelhost_llm_prefix_cache_copies",
            "Idle prompt caches copied to an empty slot before a request forking from them "
            "took them in place.",
        )
        self.follower_waits = counter(
            "modelhost_llm_follower_waits",
            "Decode steps held for requests following finished ones; caught: one arrived.",
            "caught",
        )


class HistogramBatch:
    """Observations of one histogram (a labelled child) counted here and written in one go
    by `flush`: the sum once, and each bucket that got any.

    In multiprocess mode every `Histogram.observe` writes two memory-mapped values under a
    lock; done for each generated token, on the event loop that streams the tokens, that
    was a large part of the worker's Python time per token (py-spy, one client: the
    observation took about as many samples as the rest of the token's path together). Here
    an observation is an add and a bisect. The histogram shows them after `flush`: at the
    end of each request, and after every `FLUSH_EVERY` observations."""

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        # prometheus_client (pinned) keeps a child's bounds, ending with +Inf, and its values
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = 0

    def observe(self, amount: float) -> None:
        # the first bound >= amount: the bucket `Histogram.observe` would count it in
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        child = self._child
        child._sum.inc(self._sum)
        counts = self._counts
        for i, count in enumerate(counts):
            if count:
                child._buckets[i].inc(count)
                counts[i] = 0
        self._sum = 0.0
        self._pending = 0


_families: _Families | None = None


def _shared() -> _Families:
    global _families
    if _families is None:
        _families = _Families()
    return _families


class LLMMetrics:
    """The metrics of one served model (one engine) in this process.

    Running and waiting are counted from the requests' own events (waiting: admitted, no
    token yet, prefill included; running: producing tokens), so they are never stale
    between requests; KV usage is read from the engine when a request starts or ends.
    """

    def __init__(self, model_name: str, engine: Any) -> None:
        families = _shared()
        values = (model_name, "0")
        self.families = families
        self.labels = values
        self.engine = engine
        self.ttft = families.ttft.labels(*values)
        self.itl = HistogramBatch(families.itl.labels(*values))
        self.tpot = families.tpot.labels(*values)
        self.e2e = families.e2e.labels(*values)
        self.prompt_hist = families.prompt_hist.labels(*values)
        self.generation_hist = families.generation_hist.labels(*values)
        self.prompt_tokens = families.prompt_tokens.labels(*values)
        self.generation_tokens = families.generation_tokens.labels(*values)
        self.running_gauge = families.running.labels(*values)
        self.waiting_gauge = families.waiting.labels(*values)
        self.kv_usage: Any = None  # made on the first reading: not every engine has one
        self.running = self.waiting = 0
        self._success: dict[str, Any] = {}
        unlabelled = (
            families.prefix_queries, families.prefix_hits, families.preemptions,
            families.prefix_copies,
        )  # fmt: skip
        self._counted = (  # in the order of `_engine_counts`
            *(family.labels(*values) for family in unlabelled),
            families.follower_waits.labels(*values, "true"),
            families.follower_waits.labels(*values, "false"),
        )
        stats = self._engine_stats()
        self._seen = _engine_counts(stats) if stats else (0,) * len(self._counted)

    def watch(self, stream: Any) -> None:
        """Meter one request from now on (call right after ``generate``)."""
        stream.meter = RequestMeter(self)
        self.moved(waiting=1)
        self.read_engine()

    def moved(self, waiting: int = 0, running: int = 0) -> None:
        self.waiting += waiting
        self.running += running
        self.waiting_gauge.set(self.waiting)
        self.running_gauge.set(self.running)

    def error(self, status: int, kind: str) -> None:
        self.families.errors.labels(*self.labels, str(status), kind).inc()

    def finished(self, reason: str) -> None:
        counter = self._success.get(reason)
        if counter is None:
            counter = self._success[reason] = self.families.success.labels(*self.labels, reason)
        counter.inc()

    def read_engine(self) -> None:
        """The engine's KV usage and its own counters, as they are now."""
        self.read_kv_usage()
        stats = self._engine_stats()
        if stats is None:
            return
        counts = _engine_counts(stats)
        for child, now, before in zip(self._counted, counts, self._seen, strict=True):
            if now > before:
                child.inc(now - before)
        self._seen = counts

    def _engine_stats(self) -> EngineStats | None:
        """`EngineStats` where the engine keeps them (None where it does not)."""
        try:
            return getattr(self.engine, "stats", None)
        except Exception as exc:  # read unlocked while the engine thread changes it
            log.debug("engine stats not read: %s", exc)
            return None

    def read_kv_usage(self) -> None:
        """The engine's `kv_cache_usage` (0..1), where it has one."""
        try:
            usage = getattr(self.engine, "kv_cache_usage", None)
        except Exception as exc:  # read unlocked while the engine thread changes it
            log.debug("KV usage not read: %s", exc)
            return
        if usage is None:
            return
        if self.kv_usage is None:
            self.kv_usage = self.families.kv_usage.labels(*self.labels)
        self.kv_usage.set(float(usage))


def _engine_counts(stats: EngineStats) -> tuple[int, ...]:
    """The engine counters `LLMMetrics` exports, in the order of its ``_counted``."""
    waits, caught = stats.follower_waits, stats.follower_catches
    return (
        stats.prefill_tokens + stats.prefix_tokens_reused,  # every prompt token looked up
        stats.prefix_tokens_reused,
        stats.preemptions,
        stats.prefix_copies,
        caught,
        waits - caught,
    )


class MeteredEngine:
    """`engine`, with every stream it returns metered: the service wraps its engine in one,
    so no call site of ``generate`` has to remember to."""

    def __init__(self, engine: Any, metrics: LLMMetrics) -> None:
        self.inner = engine
        self.metrics = metrics

    @property
    def backend(self) -> Any:
        return self.inner.backend

    @property
    def max_seqs(self) -> int:
        return int(self.inner.max_seqs)

    async def generate(self, prompt_tokens: Sequence[int], params: Any = None) -> TokenStream:
        stream = await self.inner.generate(prompt_tokens, params)
        self.metrics.watch(stream)
        return stream

    async def generate_many(
        self, prompt_tokens: Sequence[int], params: Any, n: int
    ) -> list[TokenStream]:
        streams = await self.inner.generate_many(prompt_tokens, params, n)
        for stream in streams:
            self.metrics.watch(stream)
        return streams

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # stats, the engine's own extras
        return getattr(self.inner, name)


class RequestMeter:
    """One request's timings; its `TokenStream` calls `item` per event and `aborted` when
    the consumer stops early (a client gone: vLLM's finished_reason "abort")."""

    __slots__ = (
        "ended",
        "first",
        "last",
        "last_seen",
        "loop",
        "metrics",
        "observe_itl",
        "prompt",
        "started",
        "tokens",
    )

    def __init__(self, metrics: LLMMetrics) -> None:
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.started = self.first = self.last = self.last_seen = perf_counter()
        self.tokens = self.prompt = 0
        self.ended = False
        self.observe_itl: Callable[[float], None] = metrics.itl.observe

    def item(self, item: TokenEvent | BaseException) -> None:
        now = perf_counter()
        if isinstance(item, BaseException):
            if not self.ended:
                self.metrics.error(500, str(getattr(item, "code", type(item).__name__)))
                self._count_tokens(self.tokens)
                self._leave()
            return
        if self.tokens:
            self.observe_itl(now - self.last)
        else:
            self.first = now
            self.prompt = item.prompt_tokens
            self.metrics.ttft.observe(now - self.started)
            self.metrics.moved(waiting=-1, running=1)
        self.tokens += 1
        self.last = now
        if item.finish_reason is not None:
            self._end(now, item.finish_reason, item.completion_tokens)

    def aborted(self) -> None:
        """Recorded on the event loop's next turn, not here: this may run in `__del__`
        during a garbage collection, possibly inside prometheus_client's (non-reentrant)
        lock on this very thread."""
        self.last_seen = perf_counter()
        # RuntimeError: the loop is closed, nobody scrapes this process any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._abort_now)

    def _abort_now(self) -> None:
        self._end(self.last_seen, "abort", self.tokens)

    def _end(self, now: float, reason: str, generated: int) -> None:
        if self.ended:
            return
        metrics = self.metrics
        metrics.finished(reason)
        metrics.e2e.observe(now - self.started)
        self._count_tokens(generated)
        if self.tokens > 1:
            metrics.tpot.observe((self.last - self.first) / (self.tokens - 1))
        self._leave()

    def _leave(self) -> None:
        self.ended = True
        self.metrics.itl.flush()
        if self.tokens:
            self.metrics.moved(running=-1)
        else:
            self.metrics.moved(waiting=-1)
        self.metrics.read_engine()

    def _count_tokens(self, generated: int) -> None:
        metrics = self.metrics
        metrics.prompt_tokens.inc(self.prompt)
        metrics.generation_tokens.inc(generated)
        metrics.prompt_hist.observe(self.prompt)
        metrics.generation_hist.observe(generated)
