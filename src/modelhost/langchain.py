"""A LangChain chat model over a modelhost (or Practicus AI) LLM endpoint.

    chat = ChatModelhost(endpoint_url=api_url, api_token=token, model_id="llama-1b")
    chat.invoke("Who is Einstein?"); chat.stream(...); chat.batch([...])

It speaks Practicus' `PrtLangRequest` → `PrtLangResponse` on the model URL, which both the
built-in LLM engine and a hand-written model.py can serve; `streaming=True` requests are read
as a plain-text stream. Same constructor as `langchain_practicus.ChatPracticus`.

Tools and structured output need fields `PrtLangRequest` does not have, so a model with
tools bound (``bind_tools``) or a structured output (``with_structured_output``) asks the
built-in engine's OpenAI route under the same URL (``v1/chat/completions``) instead:

    chat.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
    chat.with_structured_output(Person).invoke("Invent a person")   # a Person, by grammar
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.base import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel, Field

from modelhost.langchain_stream import asse_chunks, sse_chunks, usage_metadata

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
TIMEOUT = httpx.Timeout(10.0, read=600.0)
OPENAI_FIELDS = ("tools", "tool_choice", "response_format")
"""Bound kwargs that send a request to the OpenAI route instead of the Practicus one."""


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

    @property
    def _openai_url(self) -> str:
        return self.endpoint_url.rstrip("/") + "/v1/chat/completions"

    def _openai_payload(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            **self.model_kwargs,
            "messages": convert_to_openai_messages(messages),
            "model": self.model_id,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **({"stop": stop} if stop else {}),
            **{k: v for k, v in kwargs.items() if k in OPENAI_FIELDS and v is not None},
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools``; ``tool_choice``: ``auto``, ``none``, ``required`` (or ``any``),
        or a tool's name: the last two are enforced by grammar on the server."""
        specs = [convert_to_openai_tool(t) for t in tools]
        choice: str | dict[str, Any] | None = tool_choice
        if choice == "any":
            choice = "required"
        elif isinstance(choice, str) and choice not in ("auto", "none", "required"):
            choice = {"type": "function", "function": {"name": choice}}
        return self.bind(tools=specs, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers shaped by ``schema`` (a pydantic class, or a JSON schema dict), enforced
        by grammar (``response_format`` json_schema); ``method="function_calling"`` goes
        through a forced tool call instead."""
        if method != "json_schema" or include_raw:
            return super().with_structured_output(
                schema, include_raw=include_raw, method=method, **kwargs
            )
        json_schema = convert_to_json_schema(schema)
        name = str(json_schema.get("title") or "output")
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": _strip_titles(json_schema)},
        }
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema)
            if isinstance(schema, type) and issubclass(schema, BaseModel)
            else JsonOutputParser()
        )
        return self.bind(response_format=response_format) | parser

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if _wants_openai(kwargs):
            r = httpx.post(
                self._openai_url,
                json=self._openai_payload(messages, stop, kwargs),
                headers=self._headers(),
                timeout=TIMEOUT,
            )
            return _openai_result(_checked(r).json())
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
        openai = _wants_openai(kwargs)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            r = await client.post(
                self._openai_url if openai else self.endpoint_url,
                json=(
                    self._openai_payload(messages, stop, kwargs)
                    if openai
                    else self._payload(messages, stop, False)
                ),
                headers=self._headers(),
            )
        data = _checked(r).json()
        return _openai_result(data) if openai else _result(data)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if _wants_openai(kwargs):  # tool calls' arguments come piece by piece
            yield from self._stream_openai(messages, stop, run_manager, kwargs)
            return
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
        if _wants_openai(kwargs):
            async for chunk in self._astream_openai(messages, stop, run_manager, kwargs):
                yield chunk
            return
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

    def _stream_openai(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> Iterator[ChatGenerationChunk]:
        payload = {**self._openai_payload(messages, stop, kwargs), **STREAM_FIELDS}
        with httpx.stream(
            "POST", self._openai_url, json=payload, headers=self._headers(), timeout=TIMEOUT
        ) as r:
            if r.status_code >= 400:
                r.read()
                _checked(r)
            for chunk in sse_chunks(r.iter_lines()):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream_openai(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        payload = {**self._openai_payload(messages, stop, kwargs), **STREAM_FIELDS}
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as client,
            client.stream("POST", self._openai_url, json=payload, headers=self._headers()) as r,
        ):
            if r.status_code >= 400:
                await r.aread()
                _checked(r)
            async for chunk in asse_chunks(r.aiter_lines()):
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk


STREAM_FIELDS = {"stream": True, "stream_options": {"include_usage": True}}


def _wants_openai(kwargs: dict[str, Any]) -> bool:
    return any(kwargs.get(k) is not None for k in OPENAI_FIELDS)


def _strip_titles(schema: Any) -> Any:
    """pydantic's schemas title every property; titles are harmless, but a property named
    ``title`` must survive, so only ``title`` keys holding strings beside a type go."""
    if isinstance(schema, dict):
        return {
            k: _strip_titles(v)
            for k, v in schema.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def _openai_result(data: dict[str, Any]) -> ChatResult:
    """An OpenAI chat completion as LangChain's result (tool calls with parsed args)."""
    message = data["choices"][0]["message"]
    usage = usage_metadata(data.get("usage") or {})
    calls = [
        {
            "name": c["function"]["name"],
            "args": orjson.loads(c["function"]["arguments"] or "{}"),
            "id": c.get("id"),
            "type": "tool_call",
        }
        for c in message.get("tool_calls") or []
    ]
    extra = (
        {"reasoning_content": message["reasoning_content"]}
        if "reasoning_content" in message
        else {}
    )
    ai = AIMessage(
        content=message.get("content") or "",
        tool_calls=calls,
        usage_metadata=usage,
        additional_kwargs=extra,
    )
    return ChatResult(generations=[ChatGeneration(message=ai)], llm_output=dict(usage))


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
