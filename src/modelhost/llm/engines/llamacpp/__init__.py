"""llama.cpp: GGUF models through llama-cpp-python's low-level API.

`backend.LlamaCppBackend` is the `modelhost.llm.backend.Backend` that `LLMEngine` batches
over (one ``llama_decode`` per step, a KV stream per slot); `batch` fills llama.cpp's batch
from numpy, `grammar` compiles GBNF into per-sequence constraints. Importing a module here
imports llama_cpp.
"""
