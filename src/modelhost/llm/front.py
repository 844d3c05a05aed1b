"""The engine front every backend shares, and what `LLMService` sees of an engine.

`EngineFront` does what is the same for `LLMEngine` (llama.cpp), `TransformersEngine` and
`VLLMEngine`: check a request (prompt within the context, parameters the backend supports),
count it in (`Admission`: ``generate`` refuses at once with `TooManyRequests` when running
plus waiting requests reach the limit, so the HTTP layer can answer 429 before streaming),
run the decode loop's thread, report `EngineStats`, and stop. An engine adds ``_start``:
how its ``n`` requests for one prompt begin.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from modelhost.errors import BadRequest, ModelNotReady, TooManyRequests
from modelhost.llm.loop import DecodeLoop, LoopCounters
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import TokenStream


class TextBackend(Protocol):
    """The text side of a model, as the service uses it."""

    @property
    def model_name(self) -> str: ...

    @property
    def seq_ctx(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def chat_template(self) -> str: ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str: ...


class GenerationEngine(Protocol):
    """One loaded model serving many concurrent requests."""

    max_seqs: int

    @property
    def backend(self) -> TextBackend: ...

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams | None = None
    ) -> TokenStream: ...

    async def generate_many(
        self, prompt_tokens: Sequence[int], params: SamplingParams, n: int
    ) -> list[TokenStream]: ...

    def close(self) -> None: ...


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
    prefix_copies: int
    follower_waits: int
    follower_catches: int


# Requests that may wait for a slot beside the running ones, for every engine that does not
# set its own (model.json "llm.max_queue"); one more is a 429 with Retry-After.
DEFAULT_MAX_QUEUE = 64

B = TypeVar("B", bound=TextBackend)


class EngineFront(Generic[B]):
    """``max_seqs`` requests decode together and up to ``max_queue`` more wait; ``loop``
    (None for an engine that brings its own scheduler, like vLLM) runs in a thread of its
    own until `close`. ``refuses``: the backend's name when it cannot do grammars, logit
    bias or logprobs (they are refused by name)."""

    def __init__(
        self,
        backend: B,
        max_seqs: int,
        max_queue: int,
        loop: DecodeLoop[Any] | None = None,
        *,
        refuses: str | None = None,
    ) -> None:
        self.backend: B = backend
        self.max_seqs = max(1, max_seqs)
        self.max_queue = max(0, max_queue)
        self._refuses = refuses
        self._admission = Admission(self.max_seqs + self.max_queue)
        self._loop = loop
        self._thread: threading.Thread | None = None
        if loop is not None:
            name = f"{type(self).__name__}-loop"
            self._thread = threading.Thread(target=loop.run, name=name, daemon=True)
            self._thread.start()

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams | None = None
    ) -> TokenStream:
        """Queue one request; iterate the returned stream for its tokens."""
        (stream,) = await self.generate_many(prompt_tokens, params or SamplingParams(), 1)
        return stream

    async def generate_many(
        self, prompt_tokens: Sequence[int], params: SamplingParams, n: int
    ) -> list[TokenStream]:
        """``n`` completions of one prompt (OpenAI's ``n``); with a ``seed``, choice ``i``
        samples with ``seed + i``."""
        if self._refuses is not None:
            refuse_unsupported(params, self._refuses)
        prompt = list(prompt_tokens)
        max_new = max_new_tokens(prompt, params, self.backend.seq_ctx)
        self._check(prompt, params)
        self._admission.reserve(n)
        try:
            return self._start(prompt, params, max_new, n, asyncio.get_running_loop())
        except BaseException:
            self._admission.release(n)
            raise

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        """Refuse what this engine cannot run (`BadRequest`), before counting it in."""

    def _start(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new: int,
        n: int,
        loop: asyncio.AbstractEventLoop,
    ) -> list[TokenStream]:
        """Begin ``n`` requests; raise before beginning any of them, or not at all. Each
        stream calls ``self._admission.release`` when it ends."""
        raise NotImplementedError

    @property
    def stats(self) -> EngineStats:
        counters = self._loop.counters if self._loop is not None else LoopCounters()
        running, waiting = self._loop.load if self._loop is not None else (0, 0)
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
            prefix_copies=counters.prefix.copies,
            follower_waits=counters.follower_waits,
            follower_catches=counters.follower_catches,
        )

    def close(self) -> None:
        """Stop the decode loop; pending requests fail with `ModelNotReady`."""
        self._admission.close()
        self._stop()

    def _stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.stop()
            self._thread.join()


class Admission:
    """Counts requests between ``generate`` and the end of their stream (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        # Reentrant: a TokenStream dropped by a garbage collection that `reserve` triggers
        # runs `release` on this very thread, inside the lock.
        self._lock = threading.RLock()
        self._in_flight = 0
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reserve(self, n: int = 1) -> None:
        """Count ``n`` sequences in (one request with ``n`` choices), all or none."""
        with self._lock:
            if self._closed:
                raise ModelNotReady("the LLM engine is stopped")
            if self._in_flight + n > max(self.limit, n):
                raise TooManyRequests(
                    f"{self._in_flight} requests are running or queued; try again shortly",
                    retry_after=1.0,
                )
            self._in_flight += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._in_flight -= n

    def close(self) -> None:
        with self._lock:
            self._closed = True


def max_new_tokens(prompt: Sequence[int], params: SamplingParams, seq_ctx: int) -> int:
    """Most tokens ``prompt`` may still get within ``seq_ctx``; refuses unusable prompts."""
    if not prompt:
        raise BadRequest("prompt: is empty", param="prompt")
    room = seq_ctx - len(prompt)
    if room < 1:
        raise BadRequest(
            f"prompt: {len(prompt)} tokens, this model accepts at most {seq_ctx - 1}",
            param="messages",
        )
    return min(room, params.max_tokens or room)


def check_token_ids(tokens: Iterable[int], vocab_size: int, param: str = "prompt") -> None:
    """Token ids given by a client (completions accept arrays) must exist in the model."""
    bad = next((t for t in tokens if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise BadRequest(
            f"{param}: token id {bad} is outside this model's vocabulary (0..{vocab_size - 1})",
            param=param,
        )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of an ``n > 1`` request: with a seed, each choice gets its own."""
    if index == 0 or params.seed is None:
        return params
    return replace(params, seed=(params.seed + index) % (1 << 64))


UNSUPPORTED_BY_BATCH_LOOPS = {
    "logprobs": "logprobs",
    "logit_bias": "logit_bias",
    "grammar": "response_format",
}


def refuse_unsupported(params: SamplingParams, backend: str) -> None:
    """Backends without grammar, logit bias or logprobs refuse them by name (400)."""
    for name, field_name in UNSUPPORTED_BY_BATCH_LOOPS.items():
        if getattr(params, name):
            raise BadRequest(
                f"{field_name}: not supported by the {backend} backend (use llamacpp)",
                param=field_name,
            )
    if params.logprobs == 0:
        raise BadRequest(
            f"logprobs: not supported by the {backend} backend (use llamacpp)", param="logprobs"
        )
