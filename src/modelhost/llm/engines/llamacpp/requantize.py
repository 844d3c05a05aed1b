"""A GGUF model's weights converted once to a type ggml's CPU kernels run faster
(model.json ``"llm": {"quantize": "q8_0"}``), before the engine loads them.

Measured on a 2-core Intel Xeon with AVX-512 (``llama-batched-bench -npp 512 -ntg 64 -npl
1,16 -t 2 --no-repack``, SmolLM2-135M-Instruct): the demo's Q4_1 weights prefill 353-366
prompt tokens/s, a Q8_0 copy of them 672-685 and a Q4_0 copy 612-658; decoding 16 sequences
after those prompts 105, 117 and 125 tokens/s. Q4_1 has none of ggml's faster x86 matrix
paths. Q8_0 keeps Q4_1's values to within 1/254 of each block's largest; Q4_0 rounds them
again (smaller file, lower quality).

The copy is written beside the model as ``<name>.<type>.gguf``, under a temporary name that
is renamed when complete (a crash leaves no file that could be loaded), and reused while it
is newer than the model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import llama_cpp as lc

from modelhost.llm.backend import BackendError
from modelhost.llm.engines import machine_threads

_log = logging.getLogger(__name__)

# llm.quantize values: llama.cpp file types
TYPES = {"q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0}


def requantized(model: Path, kind: str) -> Path:
    """``model`` converted to ``kind`` (a key of `TYPES`): the kept copy, made if needed."""
    target = model.with_name(f"{model.stem}.{kind}.gguf")
    if target.exists() and target.stat().st_mtime >= model.stat().st_mtime:
        _log.info("using %s (%s of %s, made earlier)", target.name, kind, model.name)
        return target
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    _log.info("converting %s to %s (once: kept as %s) ...", model.name, kind, target.name)
    started = time.monotonic()
    params = lc.llama_model_quantize_default_params()
    params.ftype = TYPES[kind]
    params.allow_requantize = True
    params.nthread = machine_threads()
    try:
        failed = lc.llama_model_quantize(str(model).encode(), str(part).encode(), params)
        if failed or not part.exists():
            raise BackendError(
                f'llama.cpp could not convert {model.name} to {kind} (model.json "llm.quantize")'
            )
        os.replace(part, target)
    except OSError as exc:
        raise BackendError(
            f'cannot write the {kind} copy of {model.name} beside it ({exc}); "llm.quantize" '
            "needs the model's folder writable"
        ) from exc
    finally:
        part.unlink(missing_ok=True)
    size = target.stat().st_size / 2**20
    _log.info(
        "converted %s to %s in %.1f s (%.0f MiB)",
        model.name,
        kind,
        time.monotonic() - started,
        size,
    )
    return target
