"""What every LLM engine shows `LLMService`, and the admission counter they share.

`LLMEngine` (llama.cpp), `TransformersEngine` and `VLLMEngine` all offer the surface of
`GenerationEngine`: ``generate`` refuses at once with `TooManyRequests` when running plus
waiting requests reach the engine's limit, so the HTTP layer can answer 429 before streaming.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from modelhost.errors import BadRequest, ModelNotReady, TooManyRequests
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

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

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
