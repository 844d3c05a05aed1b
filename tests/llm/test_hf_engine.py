"""`TransformersEngine` on the HF-format demo model (SmolLM2-135M-Instruct, fp32, CPU),
and the backend choice of `build_service` (vllm is not installed here: its error is tested).

The machine is small and shared: every request stays at a few tokens, and one engine is
loaded for the whole module.
"""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_helpers import chat_tokens, first_event, run, text_of

from modelhost.demo_assets import DemoAssets
from modelhost.errors import BadRequest, InvalidModelFolder, TooManyRequests
from modelhost.llm.engines import backend_name
from modelhost.llm.params import SamplingParams
from modelhost.llm.results import JSONResult
from modelhost.llm.service import LLMService
from modelhost.worker.llm_runner import build_service

pytestmark = pytest.mark.anyio

GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def hf_dir(demo_assets: DemoAssets) -> Path:
    return demo_assets.hf_dir


@pytest.fixture(scope="module")
def hf_engine(hf_dir: Path) -> Iterator[Any]:
    import torch

    from modelhost.llm.engines.transformers.engine import TransformersEngine

    # One thread: this 2-core machine is shared, and 2 OpenMP threads on a loaded machine
    # were 5x slower per step (0.5 s against 0.1 s) than one.
    threads = torch.get_num_threads()
    engine = TransformersEngine(hf_dir, max_seqs=4, max_queue=2, n_threads=1)
    yield engine
    engine.close()
    torch.set_num_threads(threads)  # the engine sets it process-wide


def ids(events: list[Any]) -> list[int]:
    return [e.token_id for e in events]


async def wait_idle(engine: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.stats.running or engine.stats.waiting:
        assert time.monotonic() < deadline, engine.stats
        await asyncio.sleep(0.05)


# --- generation ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_greedy_answer_is_sensible(hf_engine: Any) -> None:
    prompt = chat_tokens(hf_engine.backend, "Who is Einstein?")
    events = await run(hf_engine, prompt, temperature=0, max_tokens=16)
    text = text_of(events)
    assert "Einstein" in text and ("physicist" in text or "scientist" in text), text
    assert events[-1].finish_reason in {"stop", "length"}
    assert events[-1].completion_tokens == len(events) <= 16
    assert events[-1].prompt_tokens == len(prompt)
    assert all(e.finish_reason is None for e in events[:-1])


@pytest.mark.slow
async def test_four_concurrent_requests_get_exactly_max_tokens(hf_engine: Any) -> None:
    questions = ["Count to three.", "Name a color.", "Say hello.", "What is two plus two?"]
    prompts = [chat_tokens(hf_engine.backend, q) for q in questions]
    results = await asyncio.gather(*(run(hf_engine, p, **GREEDY) for p in prompts))
    for events in results:
        assert len(events) == 8
        assert events[-1].completion_tokens == 8 and events[-1].finish_reason == "length"
    await wait_idle(hf_engine)
    assert hf_engine.stats.in_flight == 0


@pytest.mark.slow
async def test_greedy_output_alone_equals_output_in_a_batch(hf_engine: Any) -> None:
    """Left padding with the right mask and position ids changes nothing: the prompts have
    different lengths, and all 8 tokens agree exactly (fp32 here)."""
    questions = ["Who is Einstein?", "Tell me a joke about cats, please.", "Hi"]
    prompts = [chat_tokens(hf_engine.backend, q) for q in questions]
    assert len({len(p) for p in prompts}) == 3
    alone = await run(hf_engine, prompts[1], **GREEDY)
    batch = await asyncio.gather(*(run(hf_engine, p, **GREEDY) for p in prompts))
    assert ids(batch[1]) == ids(alone)


@pytest.mark.slow
async def test_request_joining_a_running_batch_matches_alone(hf_engine: Any) -> None:
    """A request that arrives mid-decode is prefilled and merged into the running batch
    (KV padded on the left); both keep their solo greedy outputs."""
    long_prompt = chat_tokens(hf_engine.backend, "Write a short poem about the moon.")
    short_prompt = chat_tokens(hf_engine.backend, "Hi")
    long_alone = await run(hf_engine, long_prompt, **{**GREEDY, "max_tokens": 10})
    short_alone = await run(hf_engine, short_prompt, **{**GREEDY, "max_tokens": 5})
    params = SamplingParams(**{**GREEDY, "max_tokens": 10})
    stream = await hf_engine.generate(long_prompt, params)
    head = [await first_event(stream), await first_event(stream)]
    joined = await run(hf_engine, short_prompt, **{**GREEDY, "max_tokens": 5})
    rest = [event async for event in stream]
    assert ids(head + rest) == ids(long_alone)
    assert ids(joined) == ids(short_alone)


@pytest.mark.slow
async def test_stop_string_and_seeded_sampling(hf_engine: Any) -> None:
    prompt = chat_tokens(hf_engine.backend, "Who is Einstein?")
    stopped = await run(hf_engine, prompt, temperature=0, max_tokens=16, stop=["physicist"])
    assert stopped[-1].finish_reason == "stop"
    assert "physicist" not in text_of(stopped) and len(stopped) < 16
    sampled = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 6}
    one, two = await asyncio.gather(*(run(hf_engine, prompt, **sampled) for _ in range(2)))
    assert ids(one) == ids(two)


@pytest.mark.slow
async def test_cancelling_stops_events_and_frees_admission_at_once(hf_engine: Any) -> None:
    prompt = chat_tokens(hf_engine.backend, "Tell me a long story.")
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    before = hf_engine.stats.generated_tokens
    stream = await hf_engine.generate(prompt, params)
    await first_event(stream)
    assert hf_engine.stats.in_flight == 1
    await stream.aclose()
    assert hf_engine.stats.in_flight == 0 and stream.finished
    with pytest.raises(StopAsyncIteration):
        await first_event(stream)
    deadline = time.monotonic() + 30
    while hf_engine._loop._running is not None:  # its row leaves the batch
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # the first token, and at most the one of a step already under way
    assert hf_engine.stats.generated_tokens - before <= 2


@pytest.mark.slow
async def test_admission_is_bounded(hf_engine: Any) -> None:
    prompt = chat_tokens(hf_engine.backend, "Hi")
    params = SamplingParams(temperature=0, max_tokens=1)
    streams = [await hf_engine.generate(prompt, params) for _ in range(6)]  # 4 rows + 2 queued
    with pytest.raises(TooManyRequests):
        await hf_engine.generate(prompt, params)
    for stream in streams:
        await stream.aclose()
    with pytest.raises(BadRequest):
        await hf_engine.generate([hf_engine.backend.vocab_size + 5], params)
    await wait_idle(hf_engine)


@pytest.mark.slow
async def test_openai_chat_through_the_service(hf_engine: Any) -> None:
    service = LLMService(hf_engine, "smol")
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 8,
    }
    result = await service.handle("POST", "v1/chat/completions", body)
    assert isinstance(result, JSONResult) and result.status == 200, result
    (choice,) = result.body["choices"]
    assert "Paris" in choice["message"]["content"]
    assert 0 < result.body["usage"]["completion_tokens"] <= 8


@pytest.mark.slow
def test_detokenizer_handles_multibyte_characters(hf_engine: Any) -> None:
    text = "héllo 日本語 😀 done"
    backend = hf_engine.backend
    tokens = backend.tokenize(text, special=False)
    detok = backend.detokenizer(backend.tokenize("Say:"))
    pieces = [detok.push(t) for t in tokens]
    assert "".join(pieces) + detok.flush() == text
    assert not any("\ufffd" in p for p in pieces)


# --- backend choice (no model load) ------------------------------------------------------------


def test_backend_defaults_follow_the_model_path(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert backend_name(gguf, {}) == "llamacpp"
    assert backend_name(tmp_path, {}) == "transformers"
    assert backend_name(tmp_path, {"backend": "vllm"}) == "vllm"
    with pytest.raises(InvalidModelFolder, match="must be one of"):
        backend_name(tmp_path, {"backend": "onnx"})
    with pytest.raises(InvalidModelFolder, match=r"needs a \.gguf file"):
        backend_name(tmp_path, {"backend": "llamacpp"})
    with pytest.raises(InvalidModelFolder, match="needs a Hugging Face model folder"):
        backend_name(gguf, {"backend": "transformers"})


def test_vllm_backend_without_vllm_says_what_is_missing(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(InvalidModelFolder) as info:
        build_service(tmp_path, "smol", {"backend": "vllm"})
    assert "backend 'vllm' needs the vllm package and a CUDA GPU" in info.value.message
    assert "pip install vllm" in info.value.message


# --- the vLLM adapter over a stand-in for vllm's async engine ----------------------------------


class _Kwargs:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class _FakeAsyncLLM:
    """Streams ``max_tokens`` delta outputs "t0 ", "t1 ", ...; records aborted requests."""

    last: _FakeAsyncLLM | None = None

    def __init__(self, args: Any) -> None:
        self.args = args
        self.aborted: list[str] = []
        self.sampling: list[Any] = []

    @classmethod
    def from_engine_args(cls, args: Any) -> _FakeAsyncLLM:
        cls.last = cls(args)
        return cls.last

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> AsyncIterator[Any]:
        self.sampling.append(sampling)
        try:
            for i in range(sampling.max_tokens):
                await asyncio.sleep(0.001)
                last = i == sampling.max_tokens - 1
                done = types.SimpleNamespace(
                    token_ids=[100 + i], text=f"t{i} ", finish_reason="length" if last else None
                )
                yield types.SimpleNamespace(finished=last, outputs=[done])
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelhost.llm.engines.vllm import engine as vllm_engine

    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = _Kwargs  # type: ignore[attr-defined]
    vllm.AsyncLLMEngine = _FakeAsyncLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = _Kwargs  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = types.SimpleNamespace(DELTA="delta")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    monkeypatch.setattr(vllm_engine, "require_vllm", lambda: None)


@pytest.mark.slow
async def test_vllm_adapter_streams_cancels_and_admits(fake_vllm: None, hf_dir: Path) -> None:
    from modelhost.llm.engines.vllm.engine import VLLMEngine

    engine = VLLMEngine(hf_dir, max_seqs=2, max_queue=0)
    fake = _FakeAsyncLLM.last
    assert fake is not None and fake.args.max_num_seqs == 2
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "top_k": 0}
    result = await LLMService(engine, "smol").handle("POST", "v1/chat/completions", body)
    assert isinstance(result, JSONResult) and result.status == 200, result
    (choice,) = result.body["choices"]
    assert choice["message"]["content"] == "t0 t1 t2 " and choice["finish_reason"] == "length"
    assert result.body["usage"]["completion_tokens"] == 3
    assert fake.sampling[0].top_k == -1 and fake.sampling[0].output_kind == "delta"

    params = SamplingParams(max_tokens=1000)
    first = await engine.generate([1, 2, 3], params)
    second = await engine.generate([1, 2, 3], params)
    with pytest.raises(TooManyRequests):
        await engine.generate([1, 2, 3], params)
    assert (await first_event(first)).text == "t0 "
    await first.aclose()
    await second.aclose()
    for _ in range(100):
        if len(fake.aborted) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(fake.aborted) == 2
    await engine.generate([1, 2, 3], params)  # admission was freed
    engine.close()
