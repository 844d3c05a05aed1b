"""Per-request sampling parameters, validated once when a request arrives.

Every check raises `modelhost.errors.BadRequest` naming the offending field (``param``), so
the OpenAI protocol can report it as ``{"error": {"param": ...}}``. ``null`` (``None``) for any
field means its default.

Beside OpenAI's sampling fields (``temperature``, ``top_p``, ``max_tokens``, ``seed``,
``stop``, ``presence_penalty``, ``frequency_penalty``) the engine supports these vendor
extensions (vLLM / llama.cpp names), accepted by every LLM protocol:

- ``top_k`` (int, 0 or -1 = off): sample among the k most likely tokens only;
- ``min_p`` (0..1, 0 = off): drop tokens less likely than ``min_p`` times the top token;
- ``repetition_penalty`` (0.01..100, 1 = off): CTRL's multiplicative penalty;
- ``ignore_eos`` (bool): keep generating past end-of-sequence up to ``max_tokens``.

Set by the protocols rather than sent as such: ``logprobs`` (None = off, k >= 0 = the
sampled token's log-probability plus the k most likely alternatives), ``logit_bias``
(token id → bias added to that token's logit before sampling) and ``grammar`` (GBNF text
the output must match, from ``response_format`` or a forced tool call).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import BadRequest

VENDOR_EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "ignore_eos")
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20
PROTOCOL_SET = frozenset({"logprobs", "grammar"})
"""Fields a protocol derives from its own request shape, never copied from a body as is."""


def _bad(param: str, message: str) -> BadRequest:
    return BadRequest(f"{param}: {message}", param=param)


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not (lo <= number <= hi) or math.isnan(number):
        raise _bad(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return number


def _integer(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        upper = "" if hi is None else f" and at most {hi}"
        raise _bad(name, f"must be at least {lo}{upper}, got {value}")
    return value


def _stop_list(value: object) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad("stop", "must be a string or a list of strings")
    stops = [s for s in items if s]
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad("stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed")
    if any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise _bad("stop", f"a stop string may have at most {MAX_STOP_LENGTH} characters")
    return stops


def _logit_bias(value: object) -> dict[int, float]:
    """``{"token id": bias}`` (JSON keys are strings) → ``{id: bias}``, biases in -100..100."""
    if not isinstance(value, Mapping):
        raise _bad("logit_bias", "must be an object mapping token ids to biases")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad("logit_bias", f"key {key!r} is not a token id") from None
        if token < 0:
            raise _bad("logit_bias", f"token id {token} is negative")
        out[token] = _number("logit_bias", bias, -100.0, 100.0)
    return out


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples. ``temperature == 0`` means greedy.

    ``max_tokens=None`` generates until EOS, a stop string or the sequence's context limit.
    Penalties look at the tokens generated so far (not the prompt), like vLLM's
    presence/frequency penalties; ``repetition_penalty`` is the multiplicative CTRL one.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    logprobs: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: str | None = None

    def __post_init__(self) -> None:
        _number("temperature", self.temperature, 0.0, 100.0)
        _number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0.0:
            raise _bad("top_p", "must be greater than 0")
        _integer("top_k", self.top_k, -1)
        _number("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            _integer("seed", self.seed, -(2**63), 2**64 - 1)
        object.__setattr__(self, "stop", _stop_list(self.stop))
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, 1)
        _number("repetition_penalty", self.repetition_penalty, 0.01, 100.0)
        _number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if not isinstance(self.ignore_eos, bool):
            raise _bad("ignore_eos", "must be a boolean")
        if self.logprobs is not None:
            _integer("top_logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def simple_greedy(self) -> bool:
        """True when the batch-wide argmax of the raw logits is this request's choice."""
        return (
            self.greedy
            and not self.has_penalties
            and not self.logit_bias
            and self.grammar is None
            and self.logprobs is None
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **defaults: Any) -> SamplingParams:
        """Build from a request body, ignoring unknown keys and ``None`` values.

        ``defaults`` fill fields the body leaves out (e.g. the protocol's own defaults).
        """
        names = cls.__dataclass_fields__.keys() - PROTOCOL_SET
        values = {k: v for k, v in defaults.items() if v is not None}
        values.update({k: v for k, v in data.items() if k in names and v is not None})
        return cls(**values)
