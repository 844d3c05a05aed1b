"""`TransformersEngine`: any Hugging Face causal-LM folder, batched, behind the engine API.

    engine = TransformersEngine("/models/SmolLM2-135M-Instruct", max_seqs=16)
    stream = await engine.generate(engine.backend.tokenize("Hello"), SamplingParams())
    async for event in stream:      # TokenEvent(text, token_id, finish_reason, ...)
        ...

The engine front (`modelhost.llm.front`) is `LLMEngine`'s, so `LLMService` and its
protocols work unchanged. One thread runs the model (`.loop`): waiting requests are
prefilled together and join the running batch between decode steps; every step decodes one
token for every running request. Grammars, logit bias and logprobs are refused by name.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import torch

from modelhost.llm.engines import machine_threads
from modelhost.llm.engines.transformers.loop import BatchLoop, HFSequence
from modelhost.llm.engines.transformers.text import HFTextBackend
from modelhost.llm.front import DEFAULT_MAX_QUEUE, EngineFront, check_token_ids, choice_params
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import Channel, TokenStream

DEFAULT_MAX_SEQS = 16
DEFAULT_MAX_PREFILL_TOKENS = 8192


def load_model(folder: Path, dtype: str = "auto", device: str | None = None) -> Any:
    """The causal LM of ``folder`` in eval mode, on ``device`` (CUDA when there is one)."""
    from transformers import AutoModelForCausalLM

    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(target).eval()


class TransformersEngine(EngineFront[HFTextBackend]):
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
        torch.set_num_threads(n_threads or machine_threads())
        path = Path(folder)
        backend = HFTextBackend.load(path, seq_ctx)
        model = load_model(path, dtype, device)
        self._embeddings = int(model.get_input_embeddings().num_embeddings)
        rows = max(1, max_seqs)
        self._batch_loop = BatchLoop(model, backend, rows, max_prefill_tokens)
        super().__init__(backend, rows, max_queue, self._batch_loop, refuses="transformers")

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        check_token_ids(prompt, min(self._embeddings, self.backend.vocab_size))

    def _start(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new: int,
        n: int,
        loop: asyncio.AbstractEventLoop,
    ) -> list[TokenStream]:
        """``n`` independent rows (no KV sharing on this backend)."""
        streams = []
        for i in range(n):
            channel = Channel(loop)
            detok = self.backend.detokenizer(prompt)
            seq = HFSequence(prompt, choice_params(params, i), channel, max_new, detok)
            on_cancel = partial(self._batch_loop.cancel, seq)
            streams.append(TokenStream(channel, on_cancel, self._admission.release))
            self._batch_loop.submit(seq)
        return streams
