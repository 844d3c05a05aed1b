"""The closed-loop LLM load generator of `bench.llm`: one aiohttp session, N clients.

Each client sends its requests one after the other (a closed loop); the questions are taken
in turn from one fixed list shared by all clients. Metrics are client-side, as vLLM's and
SGLang's serving benchmarks define them:

- TTFT: send -> first streamed chunk carrying output text;
- ITL: the gaps between consecutive streamed content chunks (pooled over all requests);
- TPOT: (E2E - TTFT) / (output tokens - 1), per request;
- E2E: send -> end of the response.

Output tokens come from the server's ``usage`` (``stream_options.include_usage``) when it
sends one, else from the number of streamed content chunks (one per token for these
servers); both are kept so the JSON shows whether they agree. Prompt tokens, and the prompt
tokens a server took from its prefix cache, come from the same ``usage``
(``prompt_tokens_details.cached_tokens``, OpenAI's name, which llama-server also sends) or
llama-server's ``timings.cache_n``; None where a server reports neither.

The client shares the machine with the server it measures, so it is kept cheap: aiohttp
(whose HTTP parser is C, as in vLLM's serving benchmark) on uvloop reads a streamed chunk
for about a third of the CPU httpx on asyncio's loop takes (65 vs 200 us per chunk, each
chunk its own read, 2-core machine); every system measured gets the same client.

`run_level` is the closed loop of one workload; `run_mixed` runs short-chat clients while a
few long-prompt clients keep the server busy with prefill, and keeps the two apart.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
import numpy as np
import orjson
import uvloop

Protocol = Literal["openai", "seed"]
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One running system's endpoint and how to talk to it."""

    system: str
    url: str
    protocol: Protocol = "openai"
    headers: dict[str, str] = field(default_factory=dict)
    # Fields added to every OpenAI request body (e.g. a server's own name for ignore_eos).
    extra_body: dict[str, Any] = field(default_factory=dict)
    # seed: counts the tokens of a generated text (its answer carries no usage).
    count_tokens: Callable[[str], int] | None = None
    # False: the server closes the connection after each streamed answer, so each request
    # asks for a connection of its own (``Connection: close``) instead of one kept alive.
    keep_alive: bool = True


@dataclass
class RequestResult:
    ok: bool
    start: float
    end: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the server reused from its prefix cache
    fixed_tokens: int | None = None  # seed: no stream, no usage: counted from its answer text
    error: str | None = None

    @property
    def tokens(self) -> int:
        if self.fixed_tokens is not None:
            return self.fixed_tokens
        return self.usage_tokens if self.usage_tokens is not None else self.chunks

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.tokens < 2 or self.fixed_tokens is not None:
            return None
        return (self.e2e - self.ttft) / (self.tokens - 1)


@dataclass(frozen=True)
class Workload:
    prompts: Sequence[str]
    max_tokens: int = 128
    system: str | None = None  # one system prompt shared by every request

    def openai_body(self, question: str, extra: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return {
            "messages": [*messages, {"role": "user", "content": question}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            **extra,
        }


def new_client(max_concurrency: int) -> aiohttp.ClientSession:
    """A session with a connection for every client (call inside the running loop)."""
    pool = max_concurrency + 4
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool, limit_per_host=pool),
        timeout=aiohttp.ClientTimeout(total=900.0, sock_connect=30.0),
    )


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop: the loop the load generator runs on."""
    return uvloop.run(main)


async def _openai_request(
    client: aiohttp.ClientSession, target: Target, body: dict[str, Any]
) -> RequestResult:
    res = RequestResult(ok=False, start=time.perf_counter(), end=0.0)
    last: float | None = None
    done = False
    headers = {**target.headers, "Content-Type": "application/json"}
    if not target.keep_alive:
        headers["Connection"] = "close"
    try:
        async with await _post(client, target.url, orjson.dumps(body), headers) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode(errors="replace")
                res.error = f"HTTP {resp.status}: {text[:300]}"
                return res
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    res.error = f"stream error: {str(chunk['error'])[:300]}"
                    return res
                _read_usage(res, chunk)
                choices = chunk.get("choices") or []
                if not choices or not (choices[0].get("delta") or {}).get("content"):
                    continue
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - res.start
                else:
                    res.itl.append(now - last)
                last = now
                res.chunks += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        res.error = _describe(exc)
        return res
    finally:
        res.end = time.perf_counter()
    # A stream that ends early but cleanly ([DONE]) is a completed, short answer: e.g.
    # llama-cpp-python's server ends a running stream when a new request arrives.
    res.ok = done
    if not done:
        res.error = "the stream ended without [DONE]"
    return res


async def _post(
    client: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """POST, sent again once when the kept-alive connection it went out on turns out to
    have been closed by the server before any response came (a server may close an idle
    connection at any time; httpx checks a pooled connection before using it, aiohttp
    does not)."""
    try:
        return await client.post(url, data=data, headers=headers)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return await client.post(url, data=data, headers=headers)


def _read_usage(res: RequestResult, chunk: dict[str, Any]) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        if "completion_tokens" in usage:
            res.usage_tokens = int(usage["completion_tokens"])
        if usage.get("prompt_tokens") is not None:
            res.prompt_tokens = int(usage["prompt_tokens"])
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            res.cached_tokens = int(details["cached_tokens"])
    timings = chunk.get("timings")  # llama-server
    if isinstance(timings, dict) and res.cached_tokens is None and "cache_n" in timings:
        res.cached_tokens = int(timings["cache_n"])


async def _seed_request(
    client: aiohttp.ClientSession, target: Target, question: str, max_tokens: int
) -> RequestResult:
    res = RequestResult(ok=False, start=time.perf_counter(), end=0.0)
    try:
        async with client.post(
            target.url, json={"user_prompt": question}, headers=target.headers
        ) as resp:
            raw = await resp.read()
        res.end = time.perf_counter()
        parsed = orjson.loads(raw) if resp.status == 200 else None
        answer = parsed.get("answer") if isinstance(parsed, dict) else None
        if not isinstance(answer, str):
            res.error = f"HTTP {resp.status}: {raw[:300].decode(errors='replace')}"
            return res
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        res.end = time.perf_counter()
        res.error = _describe(exc)
        return res
    res.ok = True
    res.ttft = res.e2e  # no streaming: the first token arrives with the last
    generated = _seed_generated_text(answer, question)
    if target.count_tokens is not None and generated is not None:
        res.fixed_tokens = min(max_tokens, target.count_tokens(generated))
    else:
        res.fixed_tokens = max_tokens  # cannot read the answer: assume a full one
    return res


def _seed_generated_text(answer: str, question: str) -> str | None:
    """The seed's answer is ``Time:<s>\nanswer:<repr of the pipeline output>``; the
    pipeline's ``generated_text`` starts with the prompt."""
    import ast

    _, sep, output = answer.partition("answer:")
    if not sep:
        return None
    try:
        parsed: Any = ast.literal_eval(output)
        text = parsed[0]["generated_text"] if isinstance(parsed, list) else parsed["generated_text"]
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError):
        return None
    if not isinstance(text, str):
        return None
    return text[len(question) :] if text.startswith(question) else text


async def run_level(
    client: aiohttp.ClientSession,
    target: Target,
    workload: Workload,
    concurrency: int,
    requests_per_client: int,
    start: int = 0,
) -> tuple[list[RequestResult], float]:
    """Run ``concurrency`` closed-loop clients; return every request's result and the wall
    time. Prompts are taken in turn from ``workload.prompts[start]`` on."""
    turn = itertools.count(start)
    results: list[RequestResult] = []

    async def one_client() -> None:
        for _ in range(requests_per_client):
            question = workload.prompts[next(turn) % len(workload.prompts)]
            if target.protocol == "seed":
                results.append(await _seed_request(client, target, question, workload.max_tokens))
            else:
                body = workload.openai_body(question, target.extra_body)
                results.append(await _openai_request(client, target, body))

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


async def run_mixed(
    client: aiohttp.ClientSession,
    target: Target,
    short: Workload,
    long: Workload,
    clients: tuple[int, int],
    requests_per_client: int,
    start: int = 0,
) -> tuple[list[RequestResult], list[RequestResult], float]:
    """``clients[0]`` closed-loop short-chat clients (``requests_per_client`` each) while
    ``clients[1]`` clients send long prompts one after the other until the short ones are
    done (their last request is waited for). Returns (short results, long results, wall time
    of the short clients). Both take their prompts in turn from index ``start`` on."""
    done = asyncio.Event()
    long_results: list[RequestResult] = []
    turn = itertools.count(start)

    async def long_client() -> None:
        while not done.is_set():
            prompt = long.prompts[next(turn) % len(long.prompts)]
            body = long.openai_body(prompt, target.extra_body)
            long_results.append(await _openai_request(client, target, body))

    loaders = [asyncio.create_task(long_client()) for _ in range(clients[1])]
    await asyncio.sleep(0.5)  # the long prompts are in prefill when the short chats start
    try:
        results, wall = await run_level(
            client, target, short, clients[0], requests_per_client, start
        )
    finally:
        done.set()
        await asyncio.gather(*loaders)
    return results, long_results, wall


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}"
    return text + (f" ({type(cause).__name__}: {cause})" if cause else "")


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000.0, 2) if len(values) else None


def summarise(
    system: str,
    concurrency: int,
    results: list[RequestResult],
    wall_s: float,
    max_tokens: int,
) -> dict[str, Any]:
    """One table row: throughput, p50/p99 latencies (ms), errors."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [gap for r in ok for gap in r.itl]
    tpot = [t for r in ok if (t := r.tpot) is not None]
    e2e = [r.e2e for r in ok]
    with_usage = [r for r in ok if r.usage_tokens is not None]
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    errors = [r.error for r in results if not r.ok and r.error]
    return {
        "system": system,
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_samples": sorted(set(errors))[:3],
        "short": sum(1 for r in ok if r.tokens < max_tokens),
        "wall_s": round(wall_s, 3),
        "output_tokens": tokens,
        "out_tok_s": round(tokens / wall_s, 2) if wall_s else 0.0,
        "req_s": round(len(ok) / wall_s, 3) if wall_s else 0.0,
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p99_ms": _pct(ttft, 99),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p99_ms": _pct(itl, 99),
        "tpot_p50_ms": _pct(tpot, 50),
        "tpot_p99_ms": _pct(tpot, 99),
        "e2e_p50_ms": _pct(e2e, 50),
        "e2e_p99_ms": _pct(e2e, 99),
        "tokens_from": (
            "answer text, tokenized (no stream)"
            if ok and ok[0].fixed_tokens is not None
            else "usage"
            if ok and len(with_usage) == len(ok)
            else "stream chunks"
        ),
        "chunks_differ_from_usage": sum(1 for r in with_usage if r.chunks != r.usage_tokens),
        "prompt_tokens": sum(prompts) if prompts else None,
        "prompt_tokens_p50": int(np.percentile(prompts, 50)) if prompts else None,
        # prompt tokens the server took from its prefix cache (None: it does not say)
        "cached_prompt_tokens": sum(cached) if cached and len(cached) == len(ok) else None,
    }
