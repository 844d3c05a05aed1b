"""vLLM: its own scheduler and paged KV cache behind the engine front (CUDA GPU only).

`engine.VLLMEngine`; vllm itself is imported when an engine is built, so modelhost runs
without it.
"""
