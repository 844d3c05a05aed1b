"""A GGUF embedding model (BERT, nomic-bert, a decoder with last-token pooling...) through
llama.cpp's low-level API, pooled by llama.cpp as the GGUF says.

It loads the weights with the engine's model settings (`backend.model_params`: on CPUs with
AMX tiles ggml's AMX kernels crashed the process on the first batch of quantized weights,
and llama-cpp-python's ``Llama`` gives no way to turn them off). A GGUF that names no
pooling (a chat model) or rank pooling (a reranker) gives no one vector per input: it is
refused when loaded, with what to deploy instead. All sequences of a pass share one KV
buffer (``kv_unified``), so a batch of short inputs is one ``llama_decode``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from modelhost.errors import InvalidModelFolder
from modelhost.llm.embedding_backends import Text, too_long
from modelhost.llm.engines import machine_threads
from modelhost.llm.engines.llamacpp.backend import (
    free,
    init_llama,
    model_params,
    token_piece,
    tokenize,
)
from modelhost.llm.engines.llamacpp.batch import NumpyBatch

MAX_BATCH_TOKENS = 2048  # tokens per pass, and the longest input (the model's window if less)
MAX_SEQS = 64  # inputs per pass
_REFUSED = {
    lc.LLAMA_POOLING_TYPE_NONE: "it names no pooling (a chat or completion model?)",
    lc.LLAMA_POOLING_TYPE_RANK: "it pools for ranking (a reranker)",
}


class LlamaCppEmbedder:
    """Token counts and vectors for one batch of inputs at a time (one thread)."""

    def __init__(self, path: Path, *, n_threads: int | None = None, truncate: bool = False) -> None:
        init_llama()
        self._model: Any = lc.llama_model_load_from_file(str(path).encode(), model_params())
        if not self._model:
            raise InvalidModelFolder(f"llama.cpp could not load {path.name}")
        self._ctx: Any = None
        try:
            self._vocab: Any = lc.llama_model_get_vocab(self._model)
            window = int(lc.llama_model_n_ctx_train(self._model)) or MAX_BATCH_TOKENS
            self.max_tokens = min(window, MAX_BATCH_TOKENS)
            self._ctx = lc.llama_init_from_model(
                self._model, _context_params(self.max_tokens, n_threads or machine_threads())
            )
            if not self._ctx:
                raise InvalidModelFolder(f"llama.cpp could not create a context for {path.name}")
            pooling = int(lc.llama_pooling_type(self._ctx))
            if pooling in _REFUSED:
                raise InvalidModelFolder(
                    f"{path.name} is not an embedding model: {_REFUSED[pooling]}; deploy a GGUF "
                    'embedding model (BERT, nomic-bert, ...) for "task": "embeddings", or this '
                    'one for "task": "chat"'
                )
        except BaseException:
            self.close()
            raise
        self.truncate = truncate
        self.dimensions = int(lc.llama_model_n_embd(self._model))
        self._mem: Any = lc.llama_get_memory(self._ctx)
        self._batch = NumpyBatch(self.max_tokens)

    def prepare(self, inputs: Sequence[Text]) -> tuple[list[Any], list[int]]:
        ids = [self._ids(i, text) for i, text in enumerate(inputs)]
        return ids, [len(i) for i in ids]

    def _ids(self, index: int, text: Text) -> list[int]:
        if not isinstance(text, str):  # token ids: their text, tokenized as a string is
            text = b"".join(token_piece(self._vocab, t, False) for t in text).decode(
                "utf-8", errors="replace"
            )
        # the model's own [CLS] ... [SEP] added; none read from the text
        ids = tokenize(self._vocab, text, add_special=True, parse_special=False)
        if len(ids) <= self.max_tokens:
            return ids
        if self.truncate:
            return ids[: self.max_tokens - 1] + ids[-1:]  # keep the closing token ([SEP])
        raise too_long(index, len(ids), self.max_tokens)

    def embed(self, prepared: list[Any]) -> list[list[float]]:
        vectors: list[list[float]] = []
        start = 0
        while start < len(prepared):
            stop, tokens = start, 0
            while stop < len(prepared) and stop - start < MAX_SEQS:
                if tokens + len(prepared[stop]) > self.max_tokens and stop > start:
                    break
                tokens += len(prepared[stop])
                stop += 1
            vectors += self._pass(prepared[start:stop])
            start = stop
        return vectors

    def _pass(self, inputs: list[list[int]]) -> list[list[float]]:
        """One ``llama_decode`` over ``inputs`` (at most `max_tokens` in all)."""
        if self._mem:
            lc.llama_memory_clear(self._mem, True)
        tokens = [t for ids in inputs for t in ids]
        positions = [p for ids in inputs for p in range(len(ids))]
        seqs = [s for s, ids in enumerate(inputs) for _ in ids]
        self._batch.fill(tokens, positions, seqs, [True] * len(tokens))  # every token pooled
        if lc.llama_decode(self._ctx, self._batch.struct) != 0:
            raise RuntimeError("llama.cpp could not embed the batch")
        out = []
        for seq in range(len(inputs)):
            pointer = lc.llama_get_embeddings_seq(self._ctx, seq)
            address = ctypes.cast(pointer, ctypes.c_void_p).value
            if not address:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            raw = (ctypes.c_float * self.dimensions).from_address(address)
            vector = np.array(raw, dtype=np.float64)
            norm = float(np.linalg.norm(vector))
            out.append((vector / norm if norm > 0 else vector).tolist())
        return out

    def close(self) -> None:
        free(self._ctx, self._model)
        self._ctx = self._model = None


def _context_params(window: int, threads: int) -> Any:
    params = lc.llama_context_default_params()
    params.n_ctx = window
    params.n_batch = params.n_ubatch = window  # an input is one micro-batch (BERT needs it)
    params.n_seq_max = MAX_SEQS
    params.kv_unified = True  # the inputs of a pass share the window's cells
    params.embeddings = True
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    return params
