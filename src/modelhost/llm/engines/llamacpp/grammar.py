"""A GBNF grammar as a per-sequence constraint on logits rows (llama.cpp's grammar sampler).

Each constrained sequence owns one ``llama_sampler_init_grammar`` sampler (its parse
state); the engine applies it to that sequence's own logits row, so constrained and free
requests share one batch. Checking the whole vocabulary (49k token pieces against the
grammar's stacks) costs milliseconds, so the sampler first picks a token as if free and
asks the grammar about that one token; only when the grammar refuses it is the whole row
masked and the token picked again (llama.cpp's own ``common_sampler`` does the same).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt

from modelhost.errors import BadRequest

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
MASKED = np.float32(-1e30)
"""What a refused token's logit becomes (finite, so top-k searches stay well defined)."""


class _Candidates:
    """A ``llama_token_data_array`` over a numpy buffer of ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.data = np.zeros(size, dtype=TOKEN_DATA)
        self.data["id"] = np.arange(size, dtype=np.int32)
        self.struct = lc.llama_token_data_array(
            data=self.data.ctypes.data_as(lc.llama_token_data_p),
            size=size,
            selected=-1,
            sorted=False,
        )
        self.pointer = ctypes.pointer(self.struct)


class GrammarCompiler:
    """Makes constraints for one model's vocabulary; used by the engine thread only
    (the candidate buffers are shared by all its constraints)."""

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self._full = _Candidates(n_vocab)
        self._one = _Candidates(1)

    def compile(self, gbnf: str) -> GrammarConstraint:
        sampler = lc.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise BadRequest("grammar: llama.cpp could not parse it", param="response_format")
        return GrammarConstraint(sampler, self)

    def allows(self, sampler: Any, token: int) -> bool:
        one = self._one
        one.data[0] = (token, 0.0, 0.0)
        one.struct.size, one.struct.selected = 1, -1
        lc.llama_sampler_apply(sampler, one.pointer)
        return bool(np.isfinite(one.data["logit"][0]))

    def mask(self, sampler: Any, row: npt.NDArray[np.float32]) -> None:
        full = self._full
        logits = full.data["logit"]
        logits[:] = row
        full.data["id"] = np.arange(row.size, dtype=np.int32)
        full.struct.size, full.struct.selected, full.struct.sorted = row.size, -1, False
        lc.llama_sampler_apply(sampler, full.pointer)
        np.copyto(row, np.where(np.isfinite(logits), logits, MASKED))


class GrammarConstraint:
    """One sequence's grammar state: which tokens may come next."""

    __slots__ = ("_compiler", "_sampler")

    def __init__(self, sampler: Any, compiler: GrammarCompiler) -> None:
        self._sampler = sampler
        self._compiler = compiler

    def allows(self, token: int) -> bool:
        return self._compiler.allows(self._sampler, token)

    def mask(self, row: npt.NDArray[np.float32]) -> None:
        """Set every token the grammar refuses here to a very low logit."""
        self._compiler.mask(self._sampler, row)

    def accept(self, token: int) -> None:
        """Advance past ``token``, which `allows` must have accepted (llama.cpp aborts the
        process on a token its grammar cannot take)."""
        lc.llama_sampler_accept(self._sampler, token)

    def __del__(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler:
            lc.llama_sampler_free(sampler)
