"""`LLMEngine`: one per loaded model, shared by all of that model's concurrent requests.

    engine = LLMEngine(backend, max_seqs=32, max_queue=64)
    stream = await engine.generate(prompt_tokens, SamplingParams(max_tokens=64))
    async for event in stream:      # TokenEvent(text, token_id, finish_reason, ...)
        ...

``generate`` admits or refuses at once (`TooManyRequests` when running + waiting requests
reach ``max_seqs + max_queue``), so an HTTP layer can still answer 429 before streaming.
Decoding runs in one thread (`modelhost.llm.scheduler`); ``llama_decode`` releases the GIL.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from functools import partial

from modelhost.llm.backend import Backend
from modelhost.llm.engine_base import Admission, check_token_ids, choice_params, max_new_tokens
from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import Constraint
from modelhost.llm.scheduler import Scheduler
from modelhost.llm.sequence import Sequence
from modelhost.llm.stream import Channel, TokenStream

DEFAULT_MAX_QUEUE = 64
DEFAULT_PREFILL_CHUNK = 256
DEFAULT_MIN_PREFIX_REUSE = 8


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int
    waiting: int
    in_flight: int
    steps: int
    generated_tokens: int
    prefill_tokens: int
    prefix_hits: int
    prefix_tokens_reused: int
    preemptions: int


class LLMEngine:
    """Continuous batching over a `Backend`.

    ``max_seqs`` requests decode together (at most the backend's slots); up to
    ``max_queue`` more wait. Prompts are prefilled in chunks of at most ``prefill_chunk``
    tokens per step, beside the running sequences' decode tokens. A prompt sharing at least
    ``min_prefix_reuse`` leading tokens with a cached sequence reuses that KV; finished
    sequences stay cached up to ``prefix_cache_tokens`` in all (default: a quarter of the
    backend's KV capacity).
    """

    def __init__(
        self,
        backend: Backend,
        max_seqs: int | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        *,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        min_prefix_reuse: int = DEFAULT_MIN_PREFIX_REUSE,
        prefix_cache_tokens: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_seqs = min(max_seqs or backend.max_seqs, backend.max_seqs)
        self.max_queue = max(0, max_queue)
        cache_tokens = (
            backend.kv_capacity // 4 if prefix_cache_tokens is None else prefix_cache_tokens
        )
        self._scheduler = Scheduler(
            backend, self.max_seqs, prefill_chunk, min_prefix_reuse, cache_tokens
        )
        self._admission = Admission(self.max_seqs + self.max_queue)
        self._thread = threading.Thread(target=self._scheduler.run, name="llm-engine", daemon=True)
        self._thread.start()

    async def generate(
        self, prompt_tokens: Seq[int], params: SamplingParams | None = None
    ) -> TokenStream:
        """Queue one request; iterate the returned stream for its tokens."""
        (stream,) = await self.generate_many(prompt_tokens, params or SamplingParams(), 1)
        return stream

    async def generate_many(
        self, prompt_tokens: Seq[int], params: SamplingParams, n: int
    ) -> list[TokenStream]:
        """``n`` completions of one prompt (OpenAI's ``n``), computing the prompt once:
        the others copy its KV. With a ``seed``, choice ``i`` samples with ``seed + i``."""
        prompt = list(prompt_tokens)
        max_new = max_new_tokens(prompt, params, self.backend.seq_ctx)
        check_token_ids(params.logit_bias, self.backend.vocab_size, "logit_bias")
        constraints = [self._constraint(params) for _ in range(n)]
        self._admission.reserve(n)
        loop = asyncio.get_running_loop()
        streams, first = [], None
        for i, constraint in enumerate(constraints):
            seq = Sequence(
                prompt, choice_params(params, i), Channel(loop), max_new, constraint, first
            )
            first = first or seq
            on_cancel = partial(self._scheduler.cancel, seq)
            streams.append(TokenStream(seq.channel, on_cancel, self._admission.release))
            self._scheduler.submit(seq)
        return streams

    def _constraint(self, params: SamplingParams) -> Constraint | None:
        if params.grammar is None:
            return None
        return self.backend.grammar(params.grammar)

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV cache in use, 0..1 (read unlocked: a gauge, llm/metrics.py)."""
        return self._scheduler._slots.kv_tokens() / max(1, self.backend.kv_capacity)

    @property
    def stats(self) -> EngineStats:
        counters = self._scheduler.counters
        running, waiting = self._scheduler.load
        return EngineStats(
            running=running,
            waiting=waiting,
            in_flight=self._admission.in_flight,
            steps=counters.steps,
            generated_tokens=counters.generated_tokens,
            prefill_tokens=counters.prefill_tokens,
            prefix_hits=counters.prefix.hits,
            prefix_tokens_reused=counters.prefix.reused_tokens,
            preemptions=counters.preemptions,
        )

    def close(self) -> None:
        """Stop the decode thread; pending requests fail with `ModelNotReady`."""
        self._admission.close()
        self._scheduler.stop()
        self._thread.join()
