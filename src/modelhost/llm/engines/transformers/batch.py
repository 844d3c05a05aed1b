"""The tensors of the rows that decode together in `TransformersEngine`.

Rows are left-padded to one width: row ``i``'s tokens are the last ``lengths[i]`` columns
of the KV cache, so one new column per step serves every row, the attention mask follows
from ``lengths`` and each row's next position id is its own length. With a plain
`DynamicCache` (full attention in every layer) batches can also be merged (new requests
join the running ones between steps) and trimmed (columns no remaining row uses are cut).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class PrefillInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: torch.Tensor


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> PrefillInputs:
    """One left-padded batch of prompts, with the mask and position ids padding needs."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return PrefillInputs(ids.to(device), mask.to(device), positions.to(device), lengths.to(device))


def _plain_layers(cache: Any) -> list[Any] | None:
    """The cache's layers when every one is a full-attention `DynamicLayer`, else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    if not all(layer.is_initialized for layer in layers):
        return None
    return list(layers)


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Zeros before the sequence axis (-2) of a [batch, heads, seq, dim] tensor."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class KVBatch:
    """A KV cache of ``len(lengths)`` left-padded rows, ``width`` columns wide."""

    def __init__(self, cache: Any, lengths: torch.Tensor, width: int) -> None:
        self.cache = cache
        self.lengths = lengths
        self.width = width
        self._layers = _plain_layers(cache)
        if self._layers is not None:
            self._zero_padding()

    @property
    def mergeable(self) -> bool:
        return self._layers is not None

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask (``width + 1`` columns) and position ids for one new token a row."""
        columns = torch.arange(self.width + 1, device=self.lengths.device)
        mask = (columns[None, :] >= (self.width - self.lengths)[:, None]).long()
        return mask, self.lengths[:, None]

    def advance(self) -> None:
        """Every row got one token (one column)."""
        self.lengths = self.lengths + 1
        self.width += 1

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order), then cut columns nobody uses."""
        index = torch.tensor(keep, dtype=torch.long, device=self.lengths.device)
        self.cache.batch_select_indices(index)
        self.lengths = self.lengths[index]
        if self._layers is not None:
            self._trim()

    def merge(self, other: KVBatch) -> None:
        """Append ``other``'s rows (both must be `mergeable`)."""
        if self._layers is None or other._layers is None:
            raise ValueError("only plain DynamicCache batches can be merged")
        width = max(self.width, other.width)
        for mine, theirs in zip(self._layers, other._layers, strict=True):
            for name in ("keys", "values"):
                ours = _pad_left(getattr(mine, name), width - self.width)
                new = _pad_left(getattr(theirs, name), width - other.width)
                setattr(mine, name, torch.cat([ours, new]))
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.width = width

    def _trim(self) -> None:
        cut = self.width - int(self.lengths.max())
        if cut <= 0 or self._layers is None:
            return
        for layer in self._layers:
            layer.keys = layer.keys[..., cut:, :]
            layer.values = layer.values[..., cut:, :]
        self.width -= cut

    def _zero_padding(self) -> None:
        """Padding columns hold whatever a fully masked query produced (possibly NaN, and
        0 x NaN is NaN inside attention): make them zeros."""
        pad = self.width - self.lengths
        if self._layers is None or not bool((pad > 0).any()):
            return
        columns = torch.arange(self.width, device=pad.device)
        where = (columns[None, :] < pad[:, None])[:, None, :, None]
        for layer in self._layers:
            layer.keys = layer.keys.masked_fill(where, 0)
            layer.values = layer.values.masked_fill(where, 0)
