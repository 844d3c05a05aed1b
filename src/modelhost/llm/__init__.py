"""The built-in LLM engine: continuous batching over a backend, and its protocols.

    backend = LlamaCppBackend(path)         # modelhost.llm.engines.llamacpp.backend
    engine = LLMEngine(backend, max_seqs=32, max_queue=64)
    service = LLMService(engine, "smollm2")
    result = await service.handle("POST", "v1/chat/completions", body)

The package reads as core + protocols + engines:

- core: `front` (what every engine shares: checks, admission, stats, close), `loop` (what
  the decode loops share), `engine` + `scheduler` + `slots` + `sequence` (continuous
  batching over a `backend.Backend`), `sampling`, `params`, `stream`, `text`, `service`
  (the HTTP-free entry point), `metrics`;
- `protocols/`: OpenAI and Practicus request/response shapes over the service;
- `engines/`: `llamacpp/` (the `Backend` for GGUF files), `transformers/` and `vllm/`
  (engines on the same front), and `build_engine` from model.json's "llm" settings.

Importing this package does not import llama.cpp, torch or vllm; the engine modules do.
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
