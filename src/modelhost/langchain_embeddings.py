"""LangChain embeddings over a modelhost (or Practicus AI) embedding endpoint.

    emb = ModelhostEmbeddings(endpoint_url=api_url, api_token=token)
    emb.embed_documents(["first text", "second text"]); emb.embed_query("a question")

It POSTs a ``PrtEmbeddingsRequest`` (``{"input": [...]}``) to the model URL, which the
built-in embedding engine and a hand-written embeddings ``model.py`` both answer with a
``PrtEmbeddingsResponse``; vectors come back in input order (sorted by ``index``). Texts are
sent ``chunk_size`` at a time. Same constructor as `ChatModelhost`; exported as
`langchain_practicus.PracticusEmbeddings`.
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel

from modelhost.langchain import TIMEOUT, _checked


class ModelhostEmbeddings(BaseModel, Embeddings):
    endpoint_url: str
    api_token: str | None = None
    model_id: str | None = None
    chunk_size: int = 64

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    def _payload(self, texts: list[str]) -> dict[str, Any]:
        return {"input": texts, "model": self.model_id}

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        size = max(1, self.chunk_size)
        return [texts[i : i + size] for i in range(0, len(texts), size)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        with httpx.Client(timeout=TIMEOUT, headers=self._headers()) as client:
            for chunk in self._chunks(texts):
                r = client.post(self.endpoint_url, json=self._payload(chunk))
                vectors.extend(_vectors(_checked(r).json(), len(chunk)))
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=self._headers()) as client:
            for chunk in self._chunks(texts):
                r = await client.post(self.endpoint_url, json=self._payload(chunk))
                vectors.extend(_vectors(_checked(r).json(), len(chunk)))
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


def _vectors(body: dict[str, Any], expected: int) -> list[list[float]]:
    data = sorted(body.get("data", []), key=lambda item: item.get("index", 0))
    vectors = [[float(x) for x in item["embedding"]] for item in data]
    if len(vectors) != expected:
        raise ValueError(f"the endpoint answered {len(vectors)} embeddings for {expected} texts")
    return vectors
