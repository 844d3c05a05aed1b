"""The no-HTTP ceiling of `bench.llm`, run in its own process (so its memory goes with it).

    python -m bench.llm_engine --levels 1,4 --waves 4 --tokens 128 [--variants engine,plain]

Uses bench/engine_loop.py: ``engine`` drives `modelhost.llm.LLMEngine` with N concurrent
``generate()`` calls (`engine_loop.engine_run`), ``plain`` is its bare greedy batched loop on
llama.cpp (`engine_loop.PlainLoop`). Each level runs ``--waves`` waves of N requests of
``--tokens`` tokens (every request produces all of them: ``ignore_eos``), so it does the
same work as ``--waves`` requests per client of the HTTP benchmark. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

MAX_SEQS = 32  # as in the model.json bench.llm deploys to modelhost
SEQ_CTX = 512  # KV context per slot, as bench.llm gives modelhost and llama-server


def run(levels: list[int], waves: int, tokens: int, variants: list[str]) -> dict[str, Any]:
    from bench.engine_loop import PROMPTS, PlainLoop, alone, default_model, engine_run
    from modelhost.llm.engine import LLMEngine
    from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend

    max_seqs = max(MAX_SEQS, *levels)
    backend = LlamaCppBackend(default_model(), max_seqs=max_seqs, seq_ctx=SEQ_CTX)
    plain = PlainLoop(backend, backend.max_batch_tokens) if "plain" in variants else None
    chats = [
        backend.tokenize(backend.render_chat([{"role": "user", "content": q}])) for q in PROMPTS
    ]

    def prompts(n: int, wave: int) -> list[list[int]]:
        return [chats[(wave * n + i) % len(chats)] for i in range(n)]

    def waves_of(variant: str, n: int, count: int) -> list[float]:
        """Seconds for each of ``count`` waves of n requests of `tokens` tokens, after one
        uncounted wave of 4. Each variant decodes on threads that end before the other's
        start (`engine_loop.alone`): the plain loop on one of its own, the engine on its
        loop thread, closed after."""
        if variant == "plain" and plain is not None:
            loop = plain

            def plain_waves() -> list[float]:
                loop.run(prompts(4, 0), tokens)
                return [n * tokens / loop.run(prompts(n, w), tokens)["tok_s"] for w in range(count)]

            return alone(plain_waves)
        engine = LLMEngine(backend, max_seqs=MAX_SEQS)
        try:
            asyncio.run(engine_run(engine, prompts(4, 0), tokens))
            times = []
            for wave in range(count):
                started = time.perf_counter()
                asyncio.run(engine_run(engine, prompts(n, wave), tokens))
                times.append(time.perf_counter() - started)
            return times
        finally:
            engine.close()

    out: dict[str, Any] = {"model": backend.model_name, "max_seqs": MAX_SEQS, "levels": {}}
    for n in levels:
        row: dict[str, Any] = {}
        for variant in variants:
            times = waves_of(variant, n, waves)
            total = sum(times)
            row[variant] = {
                "requests": n * waves,
                "output_tokens": n * waves * tokens,
                "wall_s": round(total, 3),
                "out_tok_s": round(n * waves * tokens / total, 2),
                "req_s": round(n * waves / total, 3),
                "wave_tok_s": [round(n * tokens / t, 1) for t in times],
            }
            print(
                f"  {variant} c={n}: {row[variant]['out_tok_s']} tok/s",
                file=sys.stderr,
                flush=True,
            )
        out["levels"][str(n)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--variants", default="engine")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    result = run(levels, args.waves, args.tokens, args.variants.split(","))
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
