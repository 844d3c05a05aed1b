"""The decode thread of `TransformersEngine`: batched forward passes over running requests.

Each turn of the loop: take new requests; drop finished and cancelled rows (from the KV
cache too); prefill waiting requests together (left-padded, up to the free rows and the
prefill token budget) and sample their first token; merge them into the running batch;
run one decode step (one token for every row) and sample. Every forward pass hands its
tokens to the consumers in one ``call_soon_threadsafe(deliver, ...)`` per event loop.

New requests join the running batch between steps when the model's cache is a plain
`DynamicCache`; for other caches (sliding windows, ...) they wait until the batch ends.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from modelhost.errors import ModelNotReady, PredictFailed
from modelhost.llm.backend import Logits
from modelhost.llm.engines.transformers.batch import KVBatch, left_pad
from modelhost.llm.engines.transformers.text import HFTextBackend, IncrementalDetokenizer
from modelhost.llm.loop import DecodeLoop, Outbox
from modelhost.llm.params import SamplingParams
from modelhost.llm.sampling import TokenSampler, greedy_choices
from modelhost.llm.stream import Channel, FinishReason, TokenEvent
from modelhost.llm.text import TextAssembler

_log = logging.getLogger(__name__)


class HFSequence:
    """One request. ``cancelled`` is set by the consumer's thread; the rest is the loop's."""

    __slots__ = (
        "cancelled",
        "channel",
        "detok",
        "finish_reason",
        "generated",
        "max_new",
        "params",
        "prompt",
        "sampler",
        "text",
    )

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        channel: Channel,
        max_new: int,
        detok: IncrementalDetokenizer,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.channel = channel
        self.max_new = max_new
        self.detok = detok
        self.generated: list[int] = []
        self.sampler = TokenSampler(params)
        self.text = TextAssembler(params.stop)
        self.finish_reason: FinishReason | None = None
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.cancelled or self.finish_reason is not None

    def accept(self, token: int, is_eog: bool) -> TokenEvent:
        """Take a sampled token; returns the event for the consumer."""
        self.generated.append(token)
        self.sampler.accept(token)
        if is_eog and not self.params.ignore_eos:
            return self._finish(token, self._flush(), "stop")
        text, hit_stop = self.text.feed(self.detok.push(token).encode())
        if hit_stop:
            return self._finish(token, text, "stop")
        if len(self.generated) >= self.max_new:
            return self._finish(token, text + self._flush(), "length")
        return TokenEvent(text, token, None, len(self.prompt), len(self.generated))

    def _flush(self) -> str:
        text, _ = self.text.feed(self.detok.flush().encode())
        return text + self.text.flush()

    def _finish(self, token: int, text: str, reason: FinishReason) -> TokenEvent:
        self.finish_reason = reason
        return TokenEvent(text, token, reason, len(self.prompt), len(self.generated))


@dataclass(slots=True)
class Running:
    """Rows decoding together: requests, their KV, and the token each must feed next."""

    rows: list[HFSequence]
    kv: KVBatch
    pending: list[int]

    def keep_live(self) -> bool:
        """Drop finished and cancelled rows; False when none is left. Rows of a cache that
        cannot be cut (not a plain DynamicCache) stay, unheard, until the batch ends."""
        keep = [i for i, seq in enumerate(self.rows) if not seq.done]
        if len(keep) == len(self.rows) or (keep and not self.kv.mergeable):
            return True
        if keep:
            self.kv.select(keep)
            self.rows = [self.rows[i] for i in keep]
            self.pending = [self.pending[i] for i in keep]
        return bool(keep)

    def extend(self, other: Running) -> None:
        self.kv.merge(other.kv)
        self.rows += other.rows
        self.pending += other.pending


class BatchLoop(DecodeLoop[HFSequence]):
    """The decode loop of `TransformersEngine` (see `DecodeLoop` for its threads)."""

    def __init__(
        self, model: Any, text: HFTextBackend, max_seqs: int, max_prefill_tokens: int
    ) -> None:
        super().__init__()
        self._model = model
        self._text = text
        self._max_seqs = max_seqs
        self._prefill_budget = max(1, max_prefill_tokens)
        self._device = next(model.parameters()).device
        self._vocab = text.vocab_size
        self._eog = text.eog_ids
        self._keep_last = _logits_to_keep(model)
        self._waiting: deque[HFSequence] = deque()
        self._running: Running | None = None
        self._admitting: list[HFSequence] = []

    # --- any thread -----------------------------------------------------------------------

    def _cancelled(self, seq: HFSequence) -> None:
        seq.cancelled = True

    @property
    def load(self) -> tuple[int, int]:
        running = self._running
        live = sum(not seq.done for seq in running.rows) if running else 0
        return live, len(self._waiting) + len(self._incoming)

    # --- engine thread --------------------------------------------------------------------

    def run(self) -> None:
        with torch.inference_mode():
            while True:
                self._wake.clear()
                while self._incoming:
                    self._waiting.append(self._incoming.popleft())
                if self._stopping:
                    break
                try:
                    self._turn()
                except Exception as exc:  # keep serving the next requests
                    self._fail_running(exc)
                if self._running is None and not self._waiting:
                    self._wake.wait()
        self._shutdown()

    def _turn(self) -> None:
        self._retire()
        if self._waiting and self._can_join():
            self._admit()
        if self._running is not None:
            self._step()
            self._retire()

    def _retire(self) -> None:
        if self._running is not None and not self._running.keep_live():
            self._running = None

    def _can_join(self) -> bool:
        running = self._running
        return running is None or (running.kv.mergeable and len(running.rows) < self._max_seqs)

    def _take_waiting(self) -> list[HFSequence]:
        """Waiting requests for one prefill: free rows, within the padded token budget."""
        room = self._max_seqs - (len(self._running.rows) if self._running else 0)
        picked: list[HFSequence] = []
        longest = 0
        while self._waiting and len(picked) < room:
            seq = self._waiting[0]
            if seq.done:
                self._waiting.popleft()
                continue
            longest = max(longest, len(seq.prompt))
            if picked and longest * (len(picked) + 1) > self._prefill_budget:
                break
            picked.append(self._waiting.popleft())
        return picked

    def _admit(self) -> None:
        picked = self._take_waiting()
        if not picked:
            return
        try:
            batch = self._prefill(picked)
        except Exception as exc:  # only these requests fail; the running ones go on
            self._fail(picked, exc)
            return
        if not batch.keep_live():
            return
        if self._running is None:
            self._running = batch
            return
        self._admitting = picked  # failed with the running rows if the merge fails
        self._running.extend(batch)
        self._admitting = []

    def _prefill(self, picked: list[HFSequence]) -> Running:
        inputs = left_pad([s.prompt for s in picked], self._text.pad_id, self._device)
        logits, cache = self._forward(
            inputs.input_ids, inputs.attention_mask, inputs.position_ids, None
        )
        self.counters.prefill_tokens += int(inputs.lengths.sum())
        tokens = self._sample(picked, logits)
        width = int(inputs.input_ids.shape[1])
        return Running(picked, KVBatch(cache, inputs.lengths, width), tokens)

    def _step(self) -> None:
        running = self._running
        assert running is not None
        ids = torch.tensor(running.pending, dtype=torch.long, device=self._device)[:, None]
        mask, positions = running.kv.step_inputs()
        logits, _ = self._forward(ids, mask, positions, running.kv.cache)
        running.kv.advance()
        running.pending = self._sample(running.rows, logits)
        self.counters.steps += 1

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> tuple[Logits, Any]:
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **self._keep_last,
        )
        last = out.logits[:, -1, :].float()
        if last.shape[-1] > self._vocab:  # padded embedding rows are no tokens
            last[:, self._vocab :] = float("-inf")
        logits: Logits = last.cpu().numpy()
        return logits, out.past_key_values

    def _sample(self, rows: list[HFSequence], logits: Logits) -> list[int]:
        """Choose every live row's token, send the events; returns the tokens to feed."""
        greedy = greedy_choices(logits)
        tokens: list[int] = []
        outbox: Outbox = []
        for row, seq in enumerate(rows):
            if seq.done:  # its row computes until it is dropped; nobody hears it
                tokens.append(self._text.pad_id)
                continue
            token = greedy[row] if seq.sampler.simple_greedy else seq.sampler.sample(logits[row])
            tokens.append(token)
            outbox.append((seq.channel, seq.accept(token, token in self._eog)))
        self.counters.generated_tokens += len(outbox)
        self._send(outbox)
        return tokens

    def _fail_running(self, exc: BaseException) -> None:
        rows = [*(self._running.rows if self._running else []), *self._admitting]
        self._running, self._admitting = None, []
        self._fail(rows, exc)

    def _fail(self, seqs: list[HFSequence], exc: BaseException) -> None:
        _log.error("generation failed", exc_info=exc)
        error = PredictFailed(f"generation failed: {exc}")
        self._fail_with(seqs, error)

    def _fail_with(self, seqs: list[HFSequence], error: Exception) -> None:
        live = [seq for seq in seqs if not seq.done]
        for seq in live:
            seq.finish_reason = "stop"
        self._send([(seq.channel, error) for seq in live])

    def _unreachable(self, loop: asyncio.AbstractEventLoop) -> None:
        for seq in self._running.rows if self._running else []:
            if seq.channel.loop is loop:
                seq.cancelled = True

    def _shutdown(self) -> None:
        pending = [*(self._running.rows if self._running else []), *self._waiting]
        pending += self._incoming
        self._running = None
        self._waiting.clear()
        self._fail_with(pending, ModelNotReady("the LLM engine was stopped"))


def _logits_to_keep(model: Any) -> dict[str, int]:
    """Ask for the last position's logits only, where the model supports it."""
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}
