"""The built-in LLM engine: continuous batching over a backend, and its protocols.

    backend = LlamaCppBackend(path)                 # modelhost.llm.llamacpp
    engine = LLMEngine(backend, max_seqs=32, max_queue=64)
    service = LLMService(engine, "smollm2")
    result = await service.handle("POST", "v1/chat/completions", body)

Importing this package does not import llama.cpp; `modelhost.llm.llamacpp` does.
"""

from modelhost.llm.backend import Backend
from modelhost.llm.engine import EngineStats, LLMEngine
from modelhost.llm.params import SamplingParams
from modelhost.llm.results import JSONResult, LLMResult, StreamResult
from modelhost.llm.service import LLMService
from modelhost.llm.stream import TokenEvent, TokenStream

__all__ = [
    "Backend",
    "EngineStats",
    "JSONResult",
    "LLMEngine",
    "LLMResult",
    "LLMService",
    "SamplingParams",
    "StreamResult",
    "TokenEvent",
    "TokenStream",
]
