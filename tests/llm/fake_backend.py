"""A tiny deterministic `Backend` for engine tests without a model.

It "counts": after token ``t`` the most likely next token is ``(t + 1) % vocab_size``;
token 0 is EOS. It also checks what a real KV cache would silently get wrong: every
sequence must be fed contiguous positions, and shared prefixes must really be copied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelhost.llm.backend import BackendError, KVCacheFull, Logits


class FakeBackend:
    model_name = "fake-counter"
    vocab_size = 32
    eog_ids = frozenset({0})
    separate_streams = False

    def __init__(self, max_seqs: int = 4, kv_capacity: int = 4096, seq_ctx: int = 256) -> None:
        self.max_seqs = max_seqs
        self.kv_capacity = kv_capacity
        self.seq_ctx = seq_ctx
        self.max_batch_tokens = 64
        self.kv: dict[int, list[int]] = {s: [] for s in range(max_seqs)}
        self.copies: list[tuple[int, int, int]] = []
        self.fail_next = False
        self.batches: list[int] = []
        self.seq_batches: list[list[int]] = []
        """Each decode's sequence ids, token by token."""
        self.step_delay = 0.0
        """Seconds each decode takes, to keep sequences running while a test acts."""
        self.gate: threading.Event | None = None
        """When set: each decode waits for it (``in_decode`` tells it has started), so that a
        test can queue requests for the next step."""
        self.in_decode = threading.Event()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return [1 + (ord(c) % (self.vocab_size - 1)) for c in text]

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == 0 else bytes([ord("a") + token % 26])

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        return "".join(f"{m['role']}:{m['content']};" for m in messages)

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        outputs: Sequence[bool],
    ) -> Logits:
        if self.gate is not None:
            self.in_decode.set()
            self.gate.wait()
        if self.step_delay:
            time.sleep(self.step_delay)
        if self.fail_next:
            self.fail_next = False
            raise BackendError("simulated failure")
        if sum(len(v) for v in self.kv.values()) + len(tokens) > self.kv_capacity:
            raise KVCacheFull("full")
        assert len(tokens) <= self.max_batch_tokens
        rows = []
        for token, pos, seq, out in zip(tokens, positions, seq_ids, outputs, strict=True):
            assert pos == len(self.kv[seq]), f"seq {seq}: position {pos}, cache {len(self.kv[seq])}"
            self.kv[seq].append(token)
            if out:
                row = np.zeros(self.vocab_size, dtype=np.float32)
                row[(token + 1) % self.vocab_size] = 10.0
                rows.append(row)
        self.batches.append(len(tokens))
        self.seq_batches.append(list(seq_ids))
        return np.stack(rows) if rows else np.empty((0, self.vocab_size), dtype=np.float32)

    def seq_remove(self, seq_id: int, start: int = 0) -> bool:
        del self.kv[seq_id][start:]
        return True

    def seq_copy(self, src: int, dst: int, length: int) -> None:
        assert not self.kv[dst], "copy into a sequence that still holds KV"
        self.kv[dst] = self.kv[src][:length]
        self.copies.append((src, dst, length))

    def close(self) -> None:
        pass
