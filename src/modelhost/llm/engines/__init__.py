"""The engines behind `LLMService`, and building one from model.json's "llm" section.

``"backend"`` picks the engine: ``"llamacpp"`` (the default for a .gguf file),
``"transformers"`` (the default for a Hugging Face model folder) or ``"vllm"`` (an HF
folder, needs the vllm package and a CUDA GPU). Settings, all optional:

- every backend: ``max_seqs`` (requests decoding together; llamacpp/vllm 32,
  transformers 16), ``max_queue`` (more requests waiting before 429; 64; 0: none wait),
  ``seq_ctx`` (tokens one request may hold, prompt + completion; llamacpp: 2048, at most
  the model's training context);
- llamacpp: ``threads`` (decode threads; default: the cores this worker may run on, so set
  it when two models share a host), ``threads_batch`` (prompt threads; default
  ``threads``), ``kv_capacity`` (KV cells shared by all requests; default
  ``max_seqs x seq_ctx``, so every slot can hold a full context), ``max_batch_tokens``
  (tokens per decode step, 512; at least ``max_seqs``), ``prefill_chunk`` (prompt tokens per
  step, at most what the step has left beside the decode tokens; default and most:
  ``max_batch_tokens``), ``kv_unified`` (false: a KV stream per request, each
  attending over its own cells; true: one buffer shared by all, prefixes shared in place),
  ``min_prefix_reuse`` (leading tokens a prompt must share with a cached one to reuse its
  KV; 8), ``prefix_cache_tokens`` (KV cells finished requests may keep cached for prompts
  that start alike; default: all of them with a stream per request, a quarter with
  ``kv_unified``; 0 keeps none), ``follower_wait_ms`` (after a step that finished
  requests, how long the next one waits for clients sending their next request; 20; 0:
  never), ``quantize`` (``"q8_0"`` or ``"q4_0"``: convert the weights once to that type
  before loading, see ``llamacpp/requantize.py``; default: load them as they are);
- transformers: ``threads``, ``dtype``, ``device``, ``max_prefill_tokens``;
- vllm: ``dtype``, ``gpu_memory_utilization``.

``n_threads`` is read as ``threads`` (its older name). Each engine module is imported only
when a model uses it (llama.cpp, torch and vllm are optional).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelhost.errors import InvalidModelFolder

BACKENDS = ("llamacpp", "transformers", "vllm")
# llm.quantize: the types `llamacpp.requantize` converts a GGUF model's weights to
QUANTIZE_TYPES = ("q8_0", "q4_0")


def machine_threads() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def backend_name(model_path: Path, options: dict[str, Any]) -> str:
    """The engine for ``model_path``: ``options["backend"]``, else by file or folder."""
    name = options.get("backend") or ("transformers" if model_path.is_dir() else "llamacpp")
    if name not in BACKENDS:
        raise InvalidModelFolder(
            f'model.json: "llm.backend" must be one of {", ".join(BACKENDS)}, got {name!r}'
        )
    if (name == "llamacpp") == model_path.is_dir():
        wants = "a .gguf file" if name == "llamacpp" else "a Hugging Face model folder"
        raise InvalidModelFolder(f"backend {name!r} needs {wants}; {model_path.name!r} is not")
    return name


def build_engine(model_path: Path, options: dict[str, Any]) -> Any:
    """The engine `backend_name` picks, loaded (blocking: reads the weights)."""
    builders = {"llamacpp": _llamacpp, "transformers": _transformers, "vllm": _vllm}
    return builders[backend_name(model_path, options)](model_path, options)


def _int_or(options: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = _int(options, key, minimum)
    return default if value is None else value


def _int(options: dict[str, Any], key: str, minimum: int = 1) -> int | None:
    """A whole number setting of at least ``minimum``, or None when absent."""
    value = options.get(key)
    if value is None:
        return None
    fraction = isinstance(value, float) and not value.is_integer()  # 2.5, inf, nan
    if isinstance(value, bool) or not isinstance(value, int | float | str) or fraction:
        raise InvalidModelFolder(f'model.json: "llm.{key}" must be a whole number, got {value!r}')
    try:
        number = int(value)
    except ValueError:
        raise InvalidModelFolder(
            f'model.json: "llm.{key}" must be a whole number, got {value!r}'
        ) from None
    if number < minimum:
        raise InvalidModelFolder(
            f'model.json: "llm.{key}" must be at least {minimum}, got {number}'
        )
    return number


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise InvalidModelFolder(f'model.json: "llm.{key}" must be true or false, got {value!r}')
    return value


def _max_queue(options: dict[str, Any]) -> int:
    from modelhost.llm.engine import DEFAULT_MAX_QUEUE

    return _int_or(options, "max_queue", DEFAULT_MAX_QUEUE, minimum=0)


def _threads(options: dict[str, Any]) -> int | None:
    threads = _int(options, "threads")
    return _int(options, "n_threads") if threads is None else threads


def _llamacpp(model_path: Path, options: dict[str, Any]) -> Any:
    from modelhost.llm.engine import DEFAULT_FOLLOWER_WAIT_MS, DEFAULT_MIN_PREFIX_REUSE, LLMEngine
    from modelhost.llm.engines.llamacpp.backend import DEFAULT_BATCH_TOKENS, LlamaCppBackend

    max_seqs = _int_or(options, "max_seqs", 32)
    batch_tokens = _int_or(options, "max_batch_tokens", DEFAULT_BATCH_TOKENS)
    prefill_chunk = _int_or(options, "prefill_chunk", batch_tokens)
    max_queue = _max_queue(options)
    min_reuse = _int_or(options, "min_prefix_reuse", DEFAULT_MIN_PREFIX_REUSE)
    cache_tokens = _int(options, "prefix_cache_tokens", minimum=0)
    follower_wait = _int_or(options, "follower_wait_ms", DEFAULT_FOLLOWER_WAIT_MS, minimum=0)
    quantize = options.get("quantize")
    if quantize is not None and quantize not in QUANTIZE_TYPES:
        raise InvalidModelFolder(
            f'model.json: "llm.quantize" must be one of {", ".join(QUANTIZE_TYPES)}, '
            f"got {quantize!r}"
        )
    if batch_tokens < max_seqs:
        raise InvalidModelFolder(
            f'model.json: "llm.max_batch_tokens" ({batch_tokens}) must be at least '
            f'"llm.max_seqs" ({max_seqs}): every running request puts a token in each step'
        )
    # every setting is checked before the weights are converted or read
    seq_ctx, kv_capacity = _int(options, "seq_ctx"), _int(options, "kv_capacity")
    threads, threads_batch = _threads(options), _int(options, "threads_batch")
    unified = _bool(options, "kv_unified", False)
    if quantize is not None:
        from modelhost.llm.engines.llamacpp.requantize import requantized

        model_path = requantized(model_path, quantize)
    backend = LlamaCppBackend(
        model_path,
        max_seqs=max_seqs,
        seq_ctx=seq_ctx,
        kv_capacity=kv_capacity,
        max_batch_tokens=batch_tokens,
        n_threads=threads,
        n_threads_batch=threads_batch,
        kv_unified=unified,
    )
    return LLMEngine(
        backend,
        max_seqs,
        max_queue,
        prefill_chunk=prefill_chunk,
        min_prefix_reuse=min_reuse,
        prefix_cache_tokens=cache_tokens,
        follower_wait_ms=follower_wait,
    )


def _transformers(model_path: Path, options: dict[str, Any]) -> Any:
    from modelhost.llm.engines.transformers.engine import (
        DEFAULT_MAX_PREFILL_TOKENS,
        TransformersEngine,
    )

    return TransformersEngine(
        model_path,
        _int_or(options, "max_seqs", 16),
        _max_queue(options),
        seq_ctx=_int(options, "seq_ctx"),
        dtype=str(options.get("dtype", "auto")),
        device=options.get("device"),
        max_prefill_tokens=_int_or(options, "max_prefill_tokens", DEFAULT_MAX_PREFILL_TOKENS),
        n_threads=_threads(options),
    )


def _vllm(model_path: Path, options: dict[str, Any]) -> Any:
    from modelhost.llm.engines.vllm.engine import VLLMEngine, require_vllm

    require_vllm()
    memory = options.get("gpu_memory_utilization")
    return VLLMEngine(
        model_path,
        _int_or(options, "max_seqs", 32),
        _max_queue(options),
        dtype=str(options.get("dtype", "auto")),
        gpu_memory_utilization=None if memory is None else float(memory),
        seq_ctx=_int(options, "seq_ctx"),
    )
