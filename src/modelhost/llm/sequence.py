"""One request inside the engine thread: prompt, progress, sampler and text state."""

from __future__ import annotations

from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import Constraint, TokenSampler
from modelhost.llm.stream import Channel, FinishReason, Logprob, TokenEvent
from modelhost.llm.text import TextAssembler


class Sequence:
    """Owned by the engine thread once submitted (only ``channel`` is shared).

    KV positions ``0 .. n_past - 1`` of slot ``slot`` hold ``history()[:n_past]``.
    ``after``: for the 2nd..nth choice of an ``n > 1`` request, the first one; this one is
    admitted once that one's prompt is in KV, and copies it (``seq_copy``) instead of
    computing it again.
    """

    __slots__ = (
        "after",
        "channel",
        "finish_reason",
        "generated",
        "max_new",
        "n_past",
        "params",
        "prompt",
        "reused",
        "sampler",
        "slot",
        "text",
    )

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        channel: Channel,
        max_new: int,
        constraint: Constraint | None = None,
        after: Sequence | None = None,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.channel = channel
        self.max_new = max_new
        self.slot = -1
        self.n_past = 0
        self.reused = 0
        """Prompt tokens whose KV was shared from a cached prefix at admission."""
        self.generated: list[int] = []
        self.sampler = TokenSampler(params, constraint)
        self.after = after
        self.text = TextAssembler(params.stop)
        self.finish_reason: FinishReason | None = None

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    @property
    def blocked(self) -> bool:
        """Waiting for the sequence whose prompt KV it will share."""
        first = self.after
        return first is not None and first.prefilling and not first.finished

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cached_tokens(self) -> list[int]:
        """The tokens whose KV this sequence's slot holds."""
        if self.n_past <= len(self.prompt):
            return self.prompt[: self.n_past]
        return self.prompt + self.generated[: self.n_past - len(self.prompt)]

    def accept(
        self, token: int, piece: bytes, is_eog: bool, logprob: Logprob | None = None
    ) -> TokenEvent:
        """Take a sampled token; returns the event for the consumer."""
        self.generated.append(token)
        if is_eog and not self.params.ignore_eos:
            return self.finish(token, self.text.flush(), "stop", logprob)
        self.sampler.accept(token)
        text, hit_stop = self.text.feed(piece)
        if hit_stop:
            return self.finish(token, text, "stop", logprob)
        if len(self.generated) >= self.max_new:
            return self.finish(token, text + self.text.flush(), "length", logprob)
        return TokenEvent(
            text, token, None, len(self.prompt), len(self.generated), logprob, self.reused
        )

    def finish(
        self, token: int, text: str, reason: FinishReason, logprob: Logprob | None = None
    ) -> TokenEvent:
        self.finish_reason = reason
        return TokenEvent(
            text, token, reason, len(self.prompt), len(self.generated), logprob, self.reused
        )
