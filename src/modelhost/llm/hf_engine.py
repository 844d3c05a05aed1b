"""`TransformersEngine`: any Hugging Face causal-LM folder, batched, behind the engine API.

    engine = TransformersEngine("/models/SmolLM2-135M-Instruct", max_seqs=16)
    stream = await engine.generate(engine.backend.tokenize("Hello"), SamplingParams())
    async for event in stream:      # TokenEvent(text, token_id, finish_reason, ...)
        ...

Same surface as `LLMEngine` (``backend``, ``generate``, ``close``, ``max_seqs``), so
`LLMService` and its protocols work unchanged. One thread runs the model
(`modelhost.llm.hf_loop`): waiting requests are prefilled together and join the running
batch between decode steps; every step decodes one token for every running request.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from modelhost.llm.engine_base import (
    Admission,
    check_token_ids,
    choice_params,
    max_new_tokens,
    refuse_unsupported,
)
from modelhost.llm.hf_loop import BatchLoop, HFSequence
from modelhost.llm.hf_text import HFTextBackend
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import Channel, TokenStream

DEFAULT_MAX_SEQS = 16
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_PREFILL_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class HFEngineStats:
    running: int
    waiting: int
    in_flight: int
    steps: int
    generated_tokens: int
    prefill_tokens: int


def load_model(folder: Path, dtype: str = "auto", device: str | None = None) -> Any:
    """The causal LM of ``folder`` in eval mode, on ``device`` (CUDA when there is one)."""
    from transformers import AutoModelForCausalLM

    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(target).eval()


class TransformersEngine:
    """Batched generation with transformers; ``max_seqs`` rows decode together and up to
    ``max_queue`` more requests wait. A prefill takes at most ``max_prefill_tokens`` padded
    prompt tokens (at least one request)."""

    def __init__(
        self,
        folder: Path | str,
        max_seqs: int = DEFAULT_MAX_SEQS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        *,
        seq_ctx: int | None = None,
        dtype: str = "auto",
        device: str | None = None,
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
        n_threads: int | None = None,
    ) -> None:
        torch.set_num_threads(n_threads or os.cpu_count() or 1)
        path = Path(folder)
        self.backend = HFTextBackend.load(path, seq_ctx)
        model = load_model(path, dtype, device)
        self._embeddings = int(model.get_input_embeddings().num_embeddings)
        self.max_seqs = max(1, max_seqs)
        self._admission = Admission(self.max_seqs + max(0, max_queue))
        self._loop = BatchLoop(model, self.backend, self.max_seqs, max_prefill_tokens)
        self._thread = threading.Thread(target=self._loop.run, name="hf-engine", daemon=True)
        self._thread.start()

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams | None = None
    ) -> TokenStream:
        """Queue one request; iterate the returned stream for its tokens."""
        params = params or SamplingParams()
        refuse_unsupported(params, "transformers")
        prompt = list(prompt_tokens)
        max_new = max_new_tokens(prompt, params, self.backend.seq_ctx)
        check_token_ids(prompt, min(self._embeddings, self.backend.vocab_size))
        self._admission.reserve()
        channel = Channel(asyncio.get_running_loop())
        seq = HFSequence(prompt, params, channel, max_new, self.backend.detokenizer(prompt))
        stream = TokenStream(
            channel, on_cancel=partial(self._loop.cancel, seq), on_done=self._admission.release
        )
        self._loop.submit(seq)
        return stream

    async def generate_many(
        self, prompt_tokens: Sequence[int], params: SamplingParams, n: int
    ) -> list[TokenStream]:
        """``n`` independent completions of one prompt (no KV sharing on this backend)."""
        return [await self.generate(prompt_tokens, choice_params(params, i)) for i in range(n)]

    @property
    def stats(self) -> HFEngineStats:
        counters = self._loop.counters
        running, waiting = self._loop.load
        return HFEngineStats(
            running=running,
            waiting=waiting,
            in_flight=self._admission.in_flight,
            steps=counters.steps,
            generated_tokens=counters.generated_tokens,
            prefill_tokens=counters.prefill_tokens,
        )

    def close(self) -> None:
        """Stop the decode thread; pending requests fail with `ModelNotReady`."""
        self._admission.close()
        self._loop.stop()
        self._thread.join()
