"""The text side of a Hugging Face model folder: tokenizer, chat template, stop tokens.

Shared by `TransformersEngine` and `VLLMEngine` (both serve HF folders). Generated tokens
become text through `IncrementalDetokenizer`, which decodes a short window of recent tokens
(the way vLLM and TGI do) so that it works for byte-level BPE and SentencePiece alike: a
token that ends inside a UTF-8 character yields no text until the character is complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelhost.errors import BadRequest
from modelhost.llm.chat_template import ChatTemplate

DEFAULT_SEQ_CTX = 4096
_CONTEXT_TOKENS = 5  # prompt tokens decoded before the first generated one (leading spaces)
_REPLACEMENT = "\ufffd"


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list | tuple):
        return {v for v in value if isinstance(v, int)}
    return set()


def _config_seq_ctx(config: Any) -> int | None:
    text_config = getattr(config, "text_config", None) or config
    value = getattr(text_config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


class HFTextBackend:
    """Tokenizer-side facts of one model folder (the ``backend`` the service talks to)."""

    def __init__(self, folder: Path, tokenizer: Any, config: Any, seq_ctx: int | None) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.config = config
        self.seq_ctx = seq_ctx or _config_seq_ctx(config) or DEFAULT_SEQ_CTX
        self.eog_ids = frozenset(_eog_ids(folder, tokenizer, config))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if isinstance(pad, int) else min(self.eog_ids, default=0)
        self.vocab_size = len(tokenizer)
        self._fallback_template: ChatTemplate | None = None

    @classmethod
    def load(cls, folder: Path | str, seq_ctx: int | None = None) -> HFTextBackend:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(path, tokenizer, AutoConfig.from_pretrained(path), seq_ctx)

    @property
    def model_name(self) -> str:
        return self.folder.name

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokens of ``text``; ``special`` parses control tokens and lets the tokenizer add
        BOS (unless the text, e.g. a rendered chat, already starts with it)."""
        bos = self.tokenizer.bos_token
        add = special and not (bos and text.startswith(bos))
        ids = self.tokenizer.encode(text, add_special_tokens=add, split_special_tokens=not special)
        return [int(t) for t in ids]

    @property
    def chat_template(self) -> str:
        template = self.tokenizer.chat_template
        return template if isinstance(template, str) else self._chatml().source

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for a chat, through the tokenizer's chat template (ChatML when
        the folder has none)."""
        chat = [dict(m) for m in messages]
        if not self.tokenizer.chat_template:
            return self._chatml().render(
                chat, add_generation_prompt=add_generation_prompt, tools=tools
            )
        extra = {"tools": [dict(t) for t in tools]} if tools else {}
        try:
            text = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
            )
        except Exception as exc:  # jinja2 TemplateError, ValueError from the tokenizer
            raise BadRequest(f"messages: chat template failed: {exc}", param="messages") from exc
        return str(text)

    def _chatml(self) -> ChatTemplate:
        if self._fallback_template is None:
            tok = self.tokenizer
            self._fallback_template = ChatTemplate(
                None, bos_token=tok.bos_token or "", eos_token=tok.eos_token or ""
            )
        return self._fallback_template

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def detokenizer(self, prompt: Sequence[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt[-_CONTEXT_TOKENS:])


def _eog_ids(folder: Path, tokenizer: Any, config: Any) -> set[int]:
    ids = _ids(getattr(config, "eos_token_id", None)) | _ids(tokenizer.eos_token_id)
    try:
        from transformers import GenerationConfig

        ids |= _ids(GenerationConfig.from_pretrained(folder).eos_token_id)
    except (OSError, ValueError):  # no generation_config.json
        pass
    return ids


class IncrementalDetokenizer:
    """Text deltas of generated tokens, decoding only a few recent tokens per step."""

    __slots__ = ("_ids", "_prefix", "_read", "_text")

    def __init__(self, text: HFTextBackend, context: Sequence[int]) -> None:
        self._text = text
        self._ids = list(context)
        self._prefix = 0  # window start: tokens decoded for context only
        self._read = len(self._ids)  # tokens before this were emitted

    def push(self, token: int) -> str:
        """Add one token; returns the text it completes ("" inside a character)."""
        self._ids.append(token)
        delta = self._pending()
        if not delta or delta.endswith(_REPLACEMENT):
            return ""
        del self._ids[: self._read]  # the emitted text's last tokens stay as context
        self._prefix, self._read = 0, len(self._ids)
        return delta

    def flush(self) -> str:
        """The held-back text (an unfinished character decodes as U+FFFD)."""
        delta = self._pending()
        self._prefix = self._read = len(self._ids)
        return delta

    def _pending(self) -> str:
        decode = self._text.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        return after[len(before) :] if len(after) > len(before) else ""
