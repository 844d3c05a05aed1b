"""`VLLMEngine`: vLLM's async engine behind the engine API (needs ``vllm`` and a CUDA GPU).

vLLM brings its own scheduler, paged KV cache, sampling, detokenizer and stop strings; this
adapter only turns a `SamplingParams` into vLLM's, streams its ``RequestOutput`` deltas as
`TokenEvent`s through the usual `TokenStream`, and keeps modelhost's admission limit. The
prompt and chat side (``backend``) is the folder's HF tokenizer, as for transformers.

``vllm`` is imported inside the constructor only: modelhost runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import uuid
from pathlib import Path
from typing import Any

from modelhost.errors import InvalidModelFolder, PredictFailed
from modelhost.llm.engines.transformers.text import HFTextBackend
from modelhost.llm.front import EngineFront, check_token_ids, choice_params
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import Channel, FinishReason, TokenEvent, TokenStream

NEEDS = "backend 'vllm' needs the vllm package and a CUDA GPU"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_vllm() -> None:
    """Raise `InvalidModelFolder` saying what is missing for the vllm backend."""
    if importlib.util.find_spec("vllm") is None:
        raise InvalidModelFolder(f"{NEEDS}: vllm is not installed (pip install vllm)")
    if not _cuda_available():
        raise InvalidModelFolder(f"{NEEDS}: no CUDA GPU is visible to this worker")


def vllm_sampling(params: SamplingParams, max_new: int) -> Any:
    """vLLM's SamplingParams for one request, streaming deltas."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VSamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        min_p=params.min_p,
        seed=None if params.seed is None else params.seed % (1 << 63),
        stop=list(params.stop) or None,
        max_tokens=max_new,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        ignore_eos=params.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
    )


class VLLMEngine(EngineFront[HFTextBackend]):
    """One vLLM engine for an HF model folder; ``max_seqs`` is vLLM's ``max_num_seqs``."""

    def __init__(
        self,
        folder: Path | str,
        max_seqs: int = 32,
        max_queue: int = 64,
        *,
        seq_ctx: int | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
    ) -> None:
        require_vllm()
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        path = Path(folder)
        super().__init__(HFTextBackend.load(path, seq_ctx), max_seqs, max_queue, refuses="vllm")
        extra: dict[str, Any] = {}
        if gpu_memory_utilization is not None:
            extra["gpu_memory_utilization"] = gpu_memory_utilization
        args = AsyncEngineArgs(
            model=str(path),
            dtype=dtype,
            max_num_seqs=self.max_seqs,
            max_model_len=seq_ctx,  # None: vLLM's own choice from the config
            # modelhost records the vllm:* metrics itself (llm/metrics.py); vLLM's own
            # would land in the same multiprocess files and count every request twice
            disable_log_stats=True,
            **extra,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        check_token_ids(prompt, self.backend.vocab_size)

    def _start(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new: int,
        n: int,
        loop: asyncio.AbstractEventLoop,
    ) -> list[TokenStream]:
        """``n`` independent vLLM requests (no KV sharing here)."""
        return [self._request(prompt, choice_params(params, i), max_new, loop) for i in range(n)]

    def _request(
        self,
        prompt: list[int],
        params: SamplingParams,
        max_new: int,
        loop: asyncio.AbstractEventLoop,
    ) -> TokenStream:
        channel = Channel(loop)
        task = loop.create_task(self._pump(prompt, vllm_sampling(params, max_new), channel))

        def cancel() -> None:  # may run from a finalizer: hop onto the task's loop
            with contextlib.suppress(RuntimeError):  # a closed loop took the task with it
                loop.call_soon_threadsafe(task.cancel)

        return TokenStream(channel, on_cancel=cancel, on_done=self._admission.release)

    async def _pump(self, prompt: list[int], sampling: Any, channel: Channel) -> None:
        """vLLM's outputs -> the channel. Cancelling this task aborts the vLLM request."""
        events = _Events(len(prompt))
        try:
            request = {"prompt_token_ids": prompt}
            # Read to the end (vLLM stops after the finished output): leaving the generator
            # early would close it, which vLLM takes for a client abort.
            async for output in self._engine.generate(request, sampling, uuid.uuid4().hex):
                for event in events.of(output):
                    channel.push(event)
            if not events.finished:
                channel.push(events.finish("stop"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            channel.push(PredictFailed(f"generation failed: {exc}"))

    def _stop(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()


class _Events:
    """`TokenEvent`s of one request from vLLM's delta outputs: one per token, the delta's
    text on its last token, ``finish_reason`` on the very last one."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.last_token = -1
        self.finished = False

    def of(self, output: Any) -> list[TokenEvent]:
        completion = output.outputs[0]
        tokens = [int(t) for t in completion.token_ids]
        reason = _reason(completion.finish_reason) if output.finished else None
        events: list[TokenEvent] = []
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            self.completion_tokens += 1
            self.last_token = token
            text = completion.text if last else ""
            events.append(self._event(text, reason if last else None))
        if reason is not None and not tokens:
            events.append(self._event(completion.text, reason))
        self.finished = reason is not None
        return events

    def finish(self, reason: FinishReason) -> TokenEvent:
        self.finished = True
        return self._event("", reason)

    def _event(self, text: str, reason: FinishReason | None) -> TokenEvent:
        return TokenEvent(text, self.last_token, reason, self.prompt_tokens, self.completion_tokens)


def _reason(value: str | None) -> FinishReason:
    return "length" if value == "length" else "stop"
