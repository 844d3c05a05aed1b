"""The interface between the engine and a model runtime.

The engine owns scheduling, sampling and text; a backend only turns batches of tokens into
logits and manages per-sequence KV memory. A backend with ``max_seqs`` sequence slots
accepts, in one `decode` call, tokens of several sequences (chunked prefill and single
decode tokens mixed). llama.cpp implements it (`modelhost.llm.engines.llamacpp`). The
transformers and vLLM engines bring their own loops and sit behind the engine front
(`modelhost.llm.front`) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modelhost.llm.sampling import Constraint

Logits = npt.NDArray[np.float32]


class KVCacheFull(Exception):
    """The batch did not fit in the KV memory; nothing was computed."""


class BackendError(Exception):
    """The runtime failed to compute a batch."""


class Backend(Protocol):
    """A model runtime that decodes batches of several sequences at once."""

    @property
    def model_name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seqs(self) -> int:
        """Sequence slots: valid ``seq_ids`` are ``0 .. max_seqs - 1``."""
        ...

    @property
    def kv_capacity(self) -> int:
        """Total tokens the KV memory holds, over all sequences."""
        ...

    @property
    def seq_ctx(self) -> int:
        """Most tokens (prompt + completion) one sequence may hold."""
        ...

    @property
    def max_batch_tokens(self) -> int:
        """Most tokens one `decode` call accepts."""
        ...

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end a generation (EOS, end-of-turn)."""
        ...

    @property
    def separate_streams(self) -> bool:
        """True when each slot has a KV stream of its own (llama.cpp's default layout): one
        `decode` then computes sequences together only while their slot ids are
        consecutive (a batch is split at every gap), and `seq_copy` between slots copies
        the source's whole stream (``seq_ctx`` cells). The slot table keeps running
        sequences on neighbouring slots and copies only long prefixes."""
        ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokens of ``text``; ``special`` parses control tokens and adds BOS if the model
        wants one."""
        ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as empty)."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``, control tokens written out."""
        ...

    @property
    def chat_template(self) -> str: ...

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for a chat, through the model's chat template."""
        ...

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        outputs: Sequence[bool],
    ) -> Logits:
        """Run one batch; return logits rows, one per ``outputs[i]`` true, in batch order.

        The array may be a view of the backend's buffer, valid until the next call.
        Raises `KVCacheFull` (state unchanged) or `BackendError`.
        """
        ...

    def seq_remove(self, seq_id: int, start: int = 0) -> bool:
        """Forget ``seq_id``'s KV from position ``start`` on; False if it cannot."""
        ...

    def seq_copy(self, src: int, dst: int, length: int) -> None:
        """Make ``dst`` share ``src``'s KV for positions ``0 .. length - 1``."""
        ...

    def grammar(self, gbnf: str) -> Constraint:
        """A new grammar constraint (its own parse state) for one sequence; `BadRequest`
        when the grammar does not parse."""
        ...

    def close(self) -> None: ...
