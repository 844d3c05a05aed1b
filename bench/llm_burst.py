"""Time to first token when requests arrive together: the engine alone, no HTTP.

    python -m bench.llm_burst [--clients 16] [--requests 6] [--tokens 32] [--system 500]
                              [--pairs 3] [SRC ...]

``--clients`` closed-loop clients drive `modelhost.llm.LLMEngine` (32 slots of 768 tokens,
as `bench.llm`'s shared-prompt workload deploys) with `bench.llm`'s short questions, cycled,
behind one ~``--system``-token system prompt (0: none), ``--tokens`` output tokens each
(``ignore_eos``). Every request of a wave ends in the same step, so the next ones arrive
together, as they do in `bench.llm`'s closed loop: their time to first token is the
admission (prefix copies into the slots) and one step. One uncounted wave first.

Each SRC (a ``src`` directory, e.g. an older checkout's from ``git archive``; default: this
checkout's) runs in a process of its own, the trees taking turns ``--pairs`` times, so host
drift hits them alike. Prints one JSON line per run: TTFT p50 and quartiles (ms), output
tokens/s, prompt tokens reused from the prefix cache.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLOTS, SEQ_CTX = 32, 768


async def _burst(clients: int, requests: int, tokens: int, system: int) -> dict[str, Any]:
    from bench.engine_loop import PROMPTS, default_model
    from bench.llm_prompts import shared_system_prompt
    from modelhost.llm.engine import LLMEngine
    from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend
    from modelhost.llm.params import SamplingParams

    backend = LlamaCppBackend(default_model(), max_seqs=SLOTS, seq_ctx=SEQ_CTX)
    head = [{"role": "system", "content": shared_system_prompt(system)}] if system else []
    chats = [
        backend.tokenize(backend.render_chat([*head, {"role": "user", "content": q}]))
        for q in PROMPTS
    ]
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    engine = LLMEngine(backend, max_seqs=SLOTS)
    turn = itertools.count()
    ttfts: list[float] = []

    async def client(n: int, counted: bool) -> None:
        for _ in range(n):
            prompt = chats[next(turn) % len(chats)]
            started = time.perf_counter()
            first: float | None = None
            async for _event in await engine.generate(prompt, params):
                if first is None:
                    first = time.perf_counter() - started
            if counted and first is not None:
                ttfts.append(first * 1e3)

    try:
        await asyncio.gather(*(client(1, False) for _ in range(clients)))
        reused = engine.stats.prefix_tokens_reused
        started = time.perf_counter()
        await asyncio.gather(*(client(requests, True) for _ in range(clients)))
        wall = time.perf_counter() - started
        reused = engine.stats.prefix_tokens_reused - reused
    finally:
        engine.close()
    q1, _, q3 = statistics.quantiles(ttfts, n=4)
    return {
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_q1_ms": round(q1, 1),
        "ttft_q3_ms": round(q3, 1),
        "out_tok_s": round(clients * requests * tokens / wall, 1),
        "reused_tokens": reused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=6, help="counted requests per client")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--system", type=int, default=500, help="system prompt tokens (0: none)")
    parser.add_argument("--pairs", type=int, default=3, help="turns of every tree")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("src", nargs="*", help="src directories to compare (default: ./src)")
    args = parser.parse_args()
    if args.child:
        burst = _burst(args.clients, args.requests, args.tokens, args.system)
        print(json.dumps(asyncio.run(burst)))
        return
    cmd = [sys.executable, "-m", "bench.llm_burst", "--child", "--clients", str(args.clients)]
    cmd += ["--requests", str(args.requests), "--tokens", str(args.tokens)]
    cmd += ["--system", str(args.system)]
    trees = [str(Path(s).resolve()) for s in args.src] or [str(ROOT / "src")]
    for _ in range(args.pairs):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": tree}
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({"src": tree, **row}), flush=True)


if __name__ == "__main__":
    main()
