"""A LangChain chat model over a modelhost (or Practicus AI) LLM endpoint.

    chat = ChatModelhost(endpoint_url=api_url, api_token=token, model_id="llama-1b")
    chat.invoke("Who is Einstein?"); chat.stream(...); chat.batch([...])

It speaks Practicus' `PrtLangRequest` → `PrtLangResponse` on the model URL, which both the
built-in LLM engine and a hand-written model.py can serve; `streaming=True` requests are read
as a plain-text stream. Same constructor as `langchain_practicus.ChatPracticus`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
TIMEOUT = httpx.Timeout(10.0, read=600.0)


class ChatModelhost(BaseChatModel):
    endpoint_url: str
    api_token: str | None = None
    model_id: str | None = None
    temperature: float = 0.5
    max_tokens: int = 512
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "modelhost"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "model_id": self.model_id}

    def _payload(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool
    ) -> dict[str, Any]:
        kwargs = dict(self.model_kwargs)
        if stop:
            kwargs["stop"] = stop
        return {
            "messages": [{"role": _ROLES.get(m.type, m.type), "content": m.text} for m in messages],
            "lang_model": self.model_id,
            "streaming": stream,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "lang_model_kwargs": kwargs,
        }

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        r = httpx.post(
            self.endpoint_url,
            json=self._payload(messages, stop, False),
            headers=self._headers(),
            timeout=TIMEOUT,
        )
        return _result(_checked(r).json())

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            r = await client.post(
                self.endpoint_url,
                json=self._payload(messages, stop, False),
                headers=self._headers(),
            )
        return _result(_checked(r).json())

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        payload = self._payload(messages, stop, True)
        with httpx.stream(
            "POST", self.endpoint_url, json=payload, headers=self._headers(), timeout=TIMEOUT
        ) as r:
            if r.status_code >= 400:
                r.read()
                _checked(r)
            for text in r.iter_text():
                if text:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload = self._payload(messages, stop, True)
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as client,
            client.stream("POST", self.endpoint_url, json=payload, headers=self._headers()) as r,
        ):
            if r.status_code >= 400:
                await r.aread()
                _checked(r)
            async for text in r.aiter_text():
                if text:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if run_manager:
                        await run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk


def _checked(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        from modelhost.client.errors import ApiError

        raise ApiError.from_response(r)
    return r


def _result(data: dict[str, Any]) -> ChatResult:
    usage = {
        "input_tokens": int(data.get("input_tokens", 0)),
        "output_tokens": int(data.get("output_tokens", 0)),
        "total_tokens": int(data.get("total_tokens", 0)),
    }
    message = AIMessage(content=str(data.get("content", "")), usage_metadata=usage)
    return ChatResult(
        generations=[ChatGeneration(message=message)],
        llm_output={"lang_model": data.get("lang_model"), **usage},
    )
