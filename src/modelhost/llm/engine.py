"""`LLMEngine`: one per loaded model, shared by all of that model's concurrent requests.

    engine = LLMEngine(backend, max_seqs=32, max_queue=64)
    stream = await engine.generate(prompt_tokens, SamplingParams(max_tokens=64))
    async for event in stream:      # TokenEvent(text, token_id, finish_reason, ...)
        ...

Continuous batching over any `Backend` (llama.cpp's is `modelhost.llm.engines.llamacpp`):
decoding runs in one thread (`modelhost.llm.scheduler`; ``llama_decode`` releases the GIL).
``generate`` admits or refuses at once (`modelhost.llm.front`).
"""

from __future__ import annotations

import asyncio
from functools import partial

from modelhost.llm.backend import Backend
from modelhost.llm.front import (
    DEFAULT_MAX_QUEUE,
    EngineFront,
    EngineStats,
    check_token_ids,
    choice_params,
)
from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import Constraint
from modelhost.llm.scheduler import Scheduler
from modelhost.llm.sequence import Sequence
from modelhost.llm.stream import Channel, TokenStream

# As many prompt tokens as a step has room for beside the running requests' tokens (the
# scheduler caps it at max_batch_tokens, and each step at what the decode tokens leave).
# Measured on the prefill-heavy workload at 32 clients, modelhost alone, one run each: 480
# against 256 gave TTFT p50 6.4 s against 16.9 s and 23.6 against 22.3 tok/s; the mixed
# workload's short-chat TTFT p99 went from 0.9 s to 1.8 s (llama-server: 11 s).
DEFAULT_PREFILL_CHUNK = 512
DEFAULT_MIN_PREFIX_REUSE = 8
# Up to this long after a step that finished requests, the next step waits for new ones
# (modelhost.llm.followers). Through the server, 16 clients behind a 500-token system prompt
# sent their next request ~10 ms after the last one ended (median of the waits that caught
# them all); see docs/architecture.md for what it changed.
DEFAULT_FOLLOWER_WAIT_MS = 20

__all__ = ["DEFAULT_FOLLOWER_WAIT_MS", "DEFAULT_MAX_QUEUE", "EngineStats", "LLMEngine"]


class LLMEngine(EngineFront[Backend]):
    """Continuous batching over a `Backend`.

    ``max_seqs`` requests decode together (at most the backend's slots); up to
    ``max_queue`` more wait. Prompts are prefilled in chunks of at most ``prefill_chunk``
    tokens per step, beside the running sequences' decode tokens. A prompt sharing at least
    ``min_prefix_reuse`` leading tokens with a cached sequence reuses that KV; finished
    sequences stay cached up to ``prefix_cache_tokens`` in all (default: every slot's, with a
    KV stream per slot, where a cache holds cells of its own slot only; a quarter of the KV
    capacity in one shared buffer, where cached cells lengthen every step's attention
    window). ``n > 1`` computes the prompt once: the other choices copy its
    KV. After a step that finished requests, the next one waits up to ``follower_wait_ms``
    for as many new requests (clients that send the next one at once), backing off when
    none come (`modelhost.llm.followers`); 0 never waits.
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
        follower_wait_ms: float = DEFAULT_FOLLOWER_WAIT_MS,
    ) -> None:
        slots = min(max_seqs or backend.max_seqs, backend.max_seqs)
        if prefix_cache_tokens is not None:
            cache_tokens = prefix_cache_tokens
        elif backend.separate_streams:  # a slot's cache lies in its own stream's cells
            cache_tokens = backend.kv_capacity
        else:
            cache_tokens = backend.kv_capacity // 4
        self._scheduler = Scheduler(
            backend, slots, prefill_chunk, min_prefix_reuse, cache_tokens, follower_wait_ms / 1e3
        )
        super().__init__(backend, slots, max_queue, self._scheduler)

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        check_token_ids(params.logit_bias, self.backend.vocab_size, "logit_bias")

    def _start(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new: int,
        n: int,
        loop: asyncio.AbstractEventLoop,
    ) -> list[TokenStream]:
        constraints = [self._constraint(params) for _ in range(n)]  # may refuse: first
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
        return self._scheduler.kv_tokens() / max(1, self.backend.kv_capacity)
