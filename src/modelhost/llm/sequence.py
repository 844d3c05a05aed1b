"""One request inside the engine thread: prompt, progress, sampler and text state."""

from __future__ import annotations

from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import TokenSampler
from modelhost.llm.stream import Channel, FinishReason, TokenEvent
from modelhost.llm.text import TextAssembler


class Sequence:
    """Owned by the engine thread once submitted (only ``channel`` is shared).

    KV positions ``0 .. n_past - 1`` of slot ``slot`` hold ``history()[:n_past]``.
    """

    __slots__ = (
        "channel",
        "finish_reason",
        "generated",
        "max_new",
        "n_past",
        "params",
        "prompt",
        "sampler",
        "slot",
        "text",
    )

    def __init__(
        self, prompt: list[int], params: SamplingParams, channel: Channel, max_new: int
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.channel = channel
        self.max_new = max_new
        self.slot = -1
        self.n_past = 0
        self.generated: list[int] = []
        self.sampler = TokenSampler(params)
        self.text = TextAssembler(params.stop)
        self.finish_reason: FinishReason | None = None

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cached_tokens(self) -> list[int]:
        """The tokens whose KV this sequence's slot holds."""
        if self.n_past <= len(self.prompt):
            return self.prompt[: self.n_past]
        return self.prompt + self.generated[: self.n_past - len(self.prompt)]

    def accept(self, token: int, piece: bytes, is_eog: bool) -> TokenEvent:
        """Take a sampled token; returns the event for the consumer."""
        self.generated.append(token)
        self.sampler.accept(token)
        if is_eog and not self.params.ignore_eos:
            return self.finish(token, self.text.flush(), "stop")
        text, hit_stop = self.text.feed(piece)
        if hit_stop:
            return self.finish(token, text, "stop")
        if len(self.generated) >= self.max_new:
            return self.finish(token, text + self.text.flush(), "length")
        return TokenEvent(text, token, None, len(self.prompt), len(self.generated))

    def finish(self, token: int, text: str, reason: FinishReason) -> TokenEvent:
        self.finish_reason = reason
        return TokenEvent(text, token, reason, len(self.prompt), len(self.generated))
