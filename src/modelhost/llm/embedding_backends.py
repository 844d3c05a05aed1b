"""The models behind `llm/embeddings.py`: a sentence-transformers folder (transformers) or a
GGUF embedding model (llama.cpp in embedding mode: `engines/llamacpp/embedder.py`).

A backend works in two steps, both blocking and run on the embedding thread: `prepare` turns
one request's inputs into what `embed` takes (token ids, or checked texts) and counts their
tokens, refusing an input longer than the model's window; `embed` runs one forward pass over
the prepared inputs of every request in the batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from modelhost.errors import BadRequest, InvalidModelFolder

Text = str | list[int]  # a string, or token ids the caller tokenized already


class Embedder(Protocol):
    dimensions: int

    def prepare(self, inputs: Sequence[Text]) -> tuple[list[Any], list[int]]:
        """What `embed` takes for these inputs, and each input's token count."""
        ...

    def embed(self, prepared: list[Any]) -> list[list[float]]: ...

    def close(self) -> None: ...


def load_embedder(model_path: Path, options: dict[str, Any]) -> Embedder:
    """A folder → transformers, a .gguf file → llama.cpp (blocking: loads the weights)."""
    threads = options.get("n_threads")
    n_threads = int(threads) if threads is not None else None
    truncate = bool(options.get("truncate", False))
    if model_path.is_dir():
        return TransformersEmbedder(
            model_path, device=options.get("device"), n_threads=n_threads, truncate=truncate
        )
    if model_path.suffix.lower() != ".gguf":
        raise InvalidModelFolder(
            f"embedding model {model_path.name!r} must be a sentence-transformers folder "
            "or a .gguf file"
        )
    from modelhost.llm.engines.llamacpp.embedder import LlamaCppEmbedder

    return LlamaCppEmbedder(model_path, n_threads=n_threads, truncate=truncate)


class TransformersEmbedder:
    """transformers' ``AutoModel`` pooled as the folder's sentence-transformers config says:
    mean, CLS or max over the last hidden state, L2-normalised when ``modules.json`` has a
    Normalize step. A plain HF folder gets mean pooling, normalised."""

    def __init__(
        self,
        folder: Path,
        *,
        device: str | None = None,
        n_threads: int | None = None,
        truncate: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if n_threads:
            torch.set_num_threads(n_threads)
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model: Any = AutoModel.from_pretrained(folder).to(self.device).eval()
        self.pooling, self.normalize, window = sentence_config(folder)
        limits = [window, self.tokenizer.model_max_length, _positions(self.model.config)]
        self.max_tokens = min(n for n in limits if isinstance(n, int) and n > 0)
        self.truncate = truncate
        self.dimensions = int(self.model.config.hidden_size)

    def prepare(self, inputs: Sequence[Text]) -> tuple[list[Any], list[int]]:
        ids = [self._ids(i, text) for i, text in enumerate(inputs)]
        return ids, [len(i) for i in ids]

    def _ids(self, index: int, text: Text) -> list[int]:
        ids = list(
            self.tokenizer(text, verbose=False)["input_ids"] if isinstance(text, str) else text
        )
        if len(ids) <= self.max_tokens:
            return ids
        if self.truncate:
            return ids[: self.max_tokens - 1] + ids[-1:]  # keep the closing [SEP]
        raise too_long(index, len(ids), self.max_tokens)

    def embed(self, prepared: list[Any]) -> list[list[float]]:
        torch = self._torch
        batch = self.tokenizer.pad({"input_ids": prepared}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            vectors = pool(torch, hidden, batch["attention_mask"], self.pooling)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return list(vectors.float().cpu().tolist())

    def close(self) -> None:
        self.model = None


def too_long(index: int, n: int, limit: int) -> BadRequest:
    return BadRequest(
        f"input[{index}] has {n} tokens; this model reads at most {limit} "
        '(shorten it, or set "truncate": true in model.json\'s llm section)',
        param="input",
    )


def sentence_config(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) of a sentence-transformers folder."""
    pooling, normalize, window = "mean", True, None
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        kinds = {
            str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)
        }
        normalize = "Normalize" in kinds
        if "Pooling" in kinds:
            config = _read_json(folder / str(kinds["Pooling"].get("path", "")) / "config.json")
            pooling = _pooling_mode(config)
    bert = _read_json(folder / "sentence_bert_config.json")
    if isinstance(bert, dict) and isinstance(bert.get("max_seq_length"), int):
        window = bert["max_seq_length"]
    return pooling, normalize, window


def _pooling_mode(config: object) -> str:
    if isinstance(config, dict):
        for mode in ("cls", "max", "mean"):
            if config.get(f"pooling_mode_{mode}_token") or config.get(
                f"pooling_mode_{mode}_tokens"
            ):
                return mode
    return "mean"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _positions(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def pool(torch: Any, hidden: Any, mask: Any, mode: str) -> Any:
    """One vector per sequence from the last hidden state, padding left out."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    return (hidden * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
