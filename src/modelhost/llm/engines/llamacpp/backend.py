"""llama.cpp backend through llama-cpp-python's low-level API.

The high-level ``llama_cpp.Llama`` owns a context with a single sequence slot; batching
several requests needs a context created here with ``n_seq_max`` slots. By default each slot
gets a KV stream of its own (as llama-server runs): a sequence attends over its own cells
only, where one unified buffer makes every token attend over all sequences' cells (masked),
which costs more the more sequences run. llama.cpp computes a batch over separate streams
in one pass per run of consecutive sequence ids, so the slot table keeps running sequences
on neighbouring slots (`separate_streams`). Prefix reuse across streams copies the source
sequence's cells through the sequence-state API (``llama_memory_seq_cp`` would copy the
whole stream) and trims the copy to the shared prefix. ``kv_unified=True`` gives one shared
buffer instead, where a shared prefix is shared cells (metadata only). The KV buffer's
untouched pages are given back after the context is created (`lazy_pages`): memory grows
with the cells sequences really use, and the weights' pages are handed back before the KV
is zeroed, so the two do not add up at start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from modelhost.llm.backend import BackendError, KVCacheFull, Logits
from modelhost.llm.chat_template import ChatTemplate
from modelhost.llm.engines import machine_threads
from modelhost.llm.engines.llamacpp.batch import NumpyBatch
from modelhost.llm.engines.llamacpp.grammar import GrammarCompiler, GrammarConstraint
from modelhost.llm.engines.llamacpp.head_tokens import HeadTokens
from modelhost.llm.engines.llamacpp.lazy_pages import create_lazily, release_file_pages
from modelhost.llm.engines.llamacpp.seq_state import StateCopier

DEFAULT_SEQ_CTX = 2048
DEFAULT_BATCH_TOKENS = 512
KV_STREAM_PAD = 256  # llama.cpp rounds a per-sequence KV stream up to this many cells

_GGML_LOG_WARN = 3  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_GGML_LOG_ERROR = 4
_log = logging.getLogger(__name__)
_init_lock = threading.Lock()
_initialized = False


@lc.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    if level == _GGML_LOG_ERROR:
        _log.error("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())
    elif level == _GGML_LOG_WARN:
        _log.debug("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())


def init_llama() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _initialized = True


def _meta_string(model: Any, key: str) -> str | None:
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_model_meta_val_str(model, key.encode(), buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1


def token_piece(vocab: Any, token: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, token, buf, 64, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = lc.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


class LlamaCppBackend:
    """A GGUF model with ``max_seqs`` sequence slots of ``seq_ctx`` tokens each.

    ``seq_ctx`` (default 2048, at most the model's training context) sizes the KV cache:
    ``max_seqs x seq_ctx`` cells unless ``kv_capacity`` says otherwise (then each slot gets
    ``kv_capacity / max_seqs``). ``n_threads`` decode and ``n_threads_batch`` prompt
    threads default to the cores this process may use. ``kv_unified=True`` shares one KV
    buffer between the slots instead of a stream each (see the module's notes);
    ``flash_attn`` None lets llama.cpp decide; ``n_ubatch`` defaults to the batch size.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        max_seqs: int = 32,
        kv_capacity: int | None = None,
        seq_ctx: int | None = None,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        kv_unified: bool = False,
        flash_attn: bool | None = None,
        n_ubatch: int | None = None,
    ) -> None:
        init_llama()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self._model: Any = lc.llama_model_load_from_file(str(path).encode(), model_params())
        if not self._model:
            raise BackendError(f"llama.cpp could not load {path}")
        self._ctx: Any = None
        self._unified = kv_unified
        threads = n_threads or machine_threads()
        self.threads = (threads, n_threads_batch or threads)
        train_ctx = int(lc.llama_model_n_ctx_train(self._model))
        wanted = min(seq_ctx or DEFAULT_SEQ_CTX, train_ctx or seq_ctx or DEFAULT_SEQ_CTX)
        if kv_capacity is None:
            kv_capacity = max_seqs * _round_up(wanted, 1 if kv_unified else KV_STREAM_PAD)
        self._params = self._context_params(
            max_seqs, kv_capacity, max_batch_tokens, flash_attn, n_ubatch
        )
        try:
            self._vocab: Any = lc.llama_model_get_vocab(self._model)
            release_file_pages(str(path.resolve()))
            self._ctx, released = create_lazily(self.new_context)
        except BaseException:
            self.close()
            raise
        _log.debug("%d MiB of untouched KV and compute buffers given back", released >> 20)
        self._mem: Any = lc.llama_get_memory(self._ctx)
        self._n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self._max_seqs = max_seqs
        self._kv_capacity = int(lc.llama_n_ctx(self._ctx))
        per_seq = self._kv_capacity if kv_unified else self._kv_capacity // max_seqs
        self._seq_ctx = min(wanted, per_seq)
        self._batch = NumpyBatch(max_batch_tokens)
        ctx = self._ctx
        self._states = StateCopier(
            lambda seq: int(lc.llama_state_seq_get_size(ctx, seq)),
            lambda seq, pointer, size: int(lc.llama_state_seq_get_data(ctx, pointer, size, seq)),
            lambda seq, pointer, size: int(lc.llama_state_seq_set_data(ctx, pointer, size, seq)),
        )
        self._name = _meta_string(self._model, "general.name") or path.stem
        self._pieces = [token_piece(self._vocab, t, False) for t in range(self._n_vocab)]
        self._eog = frozenset(
            t for t in range(self._n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)
        )
        self._bos = int(lc.llama_vocab_bos(self._vocab))
        self._heads = _head_tokens(self._vocab, self._n_vocab)
        self._grammars = GrammarCompiler(self._vocab, self._n_vocab)
        self._template = ChatTemplate(
            _meta_string(self._model, "tokenizer.chat_template"),
            bos_token=self._special_text(self._bos),
            eos_token=self._special_text(int(lc.llama_vocab_eos(self._vocab))),
        )

    def _context_params(
        self,
        max_seqs: int,
        kv_capacity: int,
        batch_tokens: int,
        flash_attn: bool | None,
        n_ubatch: int | None,
    ) -> Any:
        params = lc.llama_context_default_params()
        params.n_ctx = kv_capacity
        params.n_seq_max = max_seqs
        params.kv_unified = self._unified
        params.n_batch = batch_tokens
        params.n_ubatch = min(n_ubatch or batch_tokens, batch_tokens)
        params.n_threads, params.n_threads_batch = self.threads
        if flash_attn is not None:
            params.flash_attn_type = 1 if flash_attn else 0
        params.no_perf = True
        return params

    def new_context(self) -> Any:
        """A llama.cpp context with this backend's settings (benchmarks build a second one
        on the same weights); the caller frees it with ``llama_free``."""
        ctx = lc.llama_init_from_model(self._model, self._params)
        if not ctx:
            raise BackendError("llama.cpp could not create a context")
        return ctx

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return token_piece(self._vocab, token, True).decode("utf-8", errors="replace")

    # --- Backend properties -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def weight_type(self) -> str:
        """The weights' llama.cpp type as llama.cpp names it ("Q4_1", "Q8_0", ...)."""
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace").rsplit(" ", 1)[-1]

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def max_seqs(self) -> int:
        return self._max_seqs

    @property
    def kv_capacity(self) -> int:
        return self._kv_capacity

    @property
    def seq_ctx(self) -> int:
        return self._seq_ctx

    @property
    def max_batch_tokens(self) -> int:
        return self._batch.capacity

    @property
    def eog_ids(self) -> frozenset[int]:
        return self._eog

    @property
    def separate_streams(self) -> bool:
        return not self._unified

    @property
    def chat_template(self) -> str:
        return self._template.source

    # --- text ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        if special and self._heads is not None:
            tokens = self._heads(text)
        else:
            tokens = tokenize(self._vocab, text, add_special=special, parse_special=special)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self._bos:
            del tokens[0]  # the template already wrote BOS and the tokenizer added another
        return tokens

    def token_bytes(self, token: int) -> bytes:
        return self._pieces[token]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, control tokens written out (as llama-server does)."""
        data = b"".join(
            self._pieces[t] or token_piece(self._vocab, t, True) for t in tokens if t != self._bos
        )
        return data.decode("utf-8", errors="replace")

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        return self._template.render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools
        )

    def grammar(self, gbnf: str) -> GrammarConstraint:
        """A fresh constraint (its own parse state) for one sequence; 400 on a bad grammar."""
        return self._grammars.compile(gbnf)

    # --- compute ------------------------------------------------------------------------

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        outputs: Sequence[bool],
    ) -> Logits:
        n_out = self._batch.fill(tokens, positions, seq_ids, outputs)
        rc = lc.llama_decode(self._ctx, self._batch.struct)
        if rc == 1:
            raise KVCacheFull(f"no KV room for {len(tokens)} tokens")
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")
        if n_out == 0:
            return np.empty((0, self._n_vocab), dtype=np.float32)
        address = ctypes.cast(lc.llama_get_logits(self._ctx), ctypes.c_void_p).value
        if not address:
            raise BackendError("llama.cpp returned no logits")
        raw = (ctypes.c_float * (n_out * self._n_vocab)).from_address(address)
        logits: Logits = np.ctypeslib.as_array(raw).reshape(n_out, self._n_vocab)
        return logits

    def seq_remove(self, seq_id: int, start: int = 0) -> bool:
        return bool(lc.llama_memory_seq_rm(self._mem, seq_id, start, -1))

    def seq_copy(self, src: int, dst: int, length: int) -> None:
        if self._unified:  # shared cells: only metadata changes
            lc.llama_memory_seq_cp(self._mem, src, dst, 0, length)
            return
        # separate streams: llama_memory_seq_cp would copy the whole source stream
        # (seq_ctx cells, all committed in memory); the sequence-state API copies only the
        # source's cells, cut to the shared prefix before they are loaded (seq_state.py)
        if not self._states.copy_prefix(src, dst, length):  # (not seen) the whole stream
            _log.warning("KV state copy %d -> %d failed; copying the whole stream", src, dst)
            lc.llama_memory_seq_rm(self._mem, dst, -1, -1)
            lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        lc.llama_memory_seq_rm(self._mem, dst, length, -1)

    def close(self) -> None:
        free(self._ctx, self._model)
        self._ctx = self._model = None


def tokenize(vocab: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """``llama_tokenize`` of ``text``: ``add_special`` adds the model's own BOS / [CLS] ...
    [SEP]; ``parse_special`` reads special tokens written in the text as such."""
    data = text.encode("utf-8")
    size = len(data) + 8
    while True:
        buf = (lc.llama_token * size)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, size, add_special, parse_special)
        if n >= 0:
            return list(buf[:n])
        size = -n


_SPECIAL = (
    lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED | lc.LLAMA_TOKEN_ATTR_UNKNOWN
)
_PIECEWISE_VOCABS = (1, 2)  # llama_vocab_type: SPM, BPE (a text's pieces tokenized alone)


def _head_tokens(vocab: Any, n_vocab: int) -> HeadTokens | None:
    """Prompt heads' tokens kept between requests (`head_tokens`), where this vocabulary's
    tokenizer takes a text piece by piece between special tokens and adds no EOS."""
    if lc.llama_vocab_type(vocab) not in _PIECEWISE_VOCABS or lc.llama_vocab_get_add_eos(vocab):
        return None
    specials: list[str] = []
    strips_after: list[str] = []
    for token in range(n_vocab):
        attr = int(lc.llama_vocab_get_attr(vocab, token))
        if attr & _SPECIAL:
            text = (lc.llama_vocab_get_text(vocab, token) or b"").decode("utf-8", "replace")
            specials.append(text)
            if attr & lc.LLAMA_TOKEN_ATTR_RSTRIP:
                strips_after.append(text)

    def raw(text: str, add_special: bool) -> list[int]:
        return tokenize(vocab, text, add_special=add_special, parse_special=True)

    return HeadTokens(raw, specials, strips_after)


def free(ctx: Any, model: Any) -> None:
    """Free a llama.cpp context and then its model (either may be None)."""
    if ctx:
        lc.llama_free(ctx)
    if model:
        lc.llama_model_free(model)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def model_params() -> Any:
    params = lc.llama_model_default_params()
    # ggml's AMX kernels (picked for repacked weights on CPUs with AMX tiles) crashed with
    # SIGSEGV in ggml_backend_amx_mul_mat on the first batch of more than a few tokens on
    # this project's machines (Sapphire Rapids, 2026-12-01); without the extra buffer types
    # the same model decodes through the ordinary AVX-512 kernels.
    if _cpu_has_amx():
        params.use_extra_bufts = False
    return params


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " amx_tile" in line for line in fh)
    except OSError:
        return False
