"""Paired comparison at one client: systems started side by side, one request each in turn.

    python -m bench.llm_pair --turns 24 llama-server modelhost 'modelhost:PYTHONPATH=/old/src'

`bench.llm` alternates systems per concurrency level, so a host that drifts by a few percent
within a minute (these 2-core VMs do) moves one system's level and not the other's. Here
every system is up at once and they take turns request by request (the order reversed every
turn), so drift hits all alike; the result is each system's decode rate (tokens after the
first / time after the first) and TTFT, and the median of the per-turn ratios to the first
system with their quartiles. Good for differences of 1-5% that `bench.llm` cannot resolve.

``--prefill N`` sends ~N-token prompts instead (each turn a new one, the same to every
system; ``bench.llm``'s prefill workload at one client), where TTFT is what differs: the
ratios of TTFT are printed too. ``--system N`` puts one ~N-token system prompt before the
short questions (``bench.llm``'s shared workload at one client: 500): what differs is how
much of each prompt comes from the prefix cache.

``--clients N`` (N > 1) compares whole levels instead: each turn every system serves N
closed-loop clients of ``--per-client`` requests (``bench.llm``'s run of one level), the
systems in turn, the order reversed every turn; printed: each system's TTFT p50 and tokens/s
(medians over the turns) and the per-turn ratios of TTFT p50 to the first system's. Coarser
than request by request, but drift between turns still hits all alike.

A system is ``llama-server``, ``modelhost``, or ``modelhost:VAR=value,VAR=value``: those
variables are set for that modelhost's gateway and passed on to its worker (e.g. an older
checkout's ``src`` as ``PYTHONPATH`` to compare two versions of the code).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.llm import _prompts
from bench.llm_client import Target, Workload, new_client, run, run_level, summarise
from bench.llm_client import _openai_request as request
from bench.llm_prompts import long_prompts, shared_system_prompt
from bench.llm_systems import Slots, start_llama_server, start_modelhost
from modelhost.llm.engines.llamacpp.backend import KV_STREAM_PAD


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra)
    if extra:
        os.environ["MODELHOST_WORKER_ENV_PASSTHROUGH"] = ",".join(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _start(stack: contextlib.ExitStack, spec: str, slots: Slots) -> Target:
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-pair-")))
    if spec == "llama-server":
        return stack.enter_context(start_llama_server(work, slots)).target
    name, _, assignments = spec.partition(":")
    if name != "modelhost":
        raise SystemExit(f"unknown system {spec!r}: llama-server, modelhost or modelhost:VAR=v")
    env = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
    with _environ(env):  # the gateway and its worker start inside
        return stack.enter_context(start_modelhost(work, slots)).target


async def _turns(
    targets: list[tuple[str, Target]], turns: int, tokens: int, prefill: int, system: int
) -> dict[str, list[tuple[float, float]]]:
    """(decode tok/s, TTFT ms) of each system's requests; one uncounted warm-up turn."""
    prompts = long_prompts(turns + 1, prefill, seed=7) if prefill else _prompts()
    workload = Workload(prompts, tokens, system=shared_system_prompt(system) if system else None)
    found: dict[str, list[tuple[float, float]]] = {spec: [] for spec, _ in targets}
    async with new_client(4) as client:
        for turn in range(turns + 1):
            for spec, target in targets if turn % 2 else targets[::-1]:
                question = workload.prompts[turn % len(workload.prompts)]
                res = await request(client, target, workload.openai_body(question, {}))
                if not res.ok or res.ttft is None:
                    raise SystemExit(f"{spec}: {res.error}")
                if turn:
                    rate = (res.tokens - 1) / (res.e2e - res.ttft)
                    found[spec].append((rate, res.ttft * 1e3))
    return found


async def _levels(
    targets: list[tuple[str, Target]], args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    """(TTFT p50 ms, tok/s) of each system's level per turn; one uncounted warm-up level."""
    turns, clients, per = args.turns, args.clients, args.per_client
    count = clients + turns * clients * per
    prompts = long_prompts(count, args.prefill, seed=7) if args.prefill else _prompts()
    system = shared_system_prompt(args.system) if args.system else None
    workload = Workload(prompts, args.tokens, system=system)
    found: dict[str, list[tuple[float, float]]] = {spec: [] for spec, _ in targets}
    async with new_client(clients * 2) as client:
        for _, target in targets:
            await run_level(client, target, workload, clients, 1)
        for turn in range(turns):
            for spec, target in targets if turn % 2 else targets[::-1]:
                start = clients + turn * clients * per  # new prompts every turn
                results, wall = await run_level(client, target, workload, clients, per, start)
                row = summarise(spec, clients, results, wall, workload.max_tokens)
                if row["errors"] or row["ttft_p50_ms"] is None:
                    raise SystemExit(f"{spec}: {row['error_samples']}")
                found[spec].append((float(row["ttft_p50_ms"]), float(row["out_tok_s"])))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+", help="the first is the base of the ratios")
    parser.add_argument("--turns", type=int, default=24, help="requests per system")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    parser.add_argument(
        "--prefill", type=int, default=0, metavar="N", help="~N-token prompts, a new one per turn"
    )
    parser.add_argument(
        "--system", type=int, default=0, metavar="N", help="one ~N-token system prompt for all"
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="N > 1: whole levels of N clients per turn"
    )
    parser.add_argument(
        "--per-client", type=int, default=2, help="requests per client and turn (--clients)"
    )
    args = parser.parse_args()
    # room for the prompt (its chat template and the count's slack) and the answer, in the
    # 256-cell steps llama.cpp sizes a stream in: 1,280 for bench.llm's 1,000-token prompts
    need = args.prefill + args.system + args.tokens + 128
    long = args.prefill or args.system
    slots = Slots(seq_ctx=-(-need // KV_STREAM_PAD) * KV_STREAM_PAD) if long else Slots()
    with contextlib.ExitStack() as stack:
        targets = [(spec, _start(stack, spec, slots)) for spec in args.systems]
        if args.clients > 1:
            _print_levels(args.systems, run(_levels(targets, args)))
            return
        found = run(_turns(targets, args.turns, args.tokens, args.prefill, args.system))
    base = found[args.systems[0]]
    for spec in args.systems:
        rows = found[spec]
        pairs = list(zip(rows, base, strict=True))
        print(
            f"{spec:40s} decode {statistics.median(r[0] for r in rows):6.1f} tok/s, "
            f"TTFT p50 {statistics.median(r[1] for r in rows):6.1f} ms; ratios to "
            f"{args.systems[0]}: decode {_ratio([m[0] / t[0] for m, t in pairs])}, "
            f"TTFT {_ratio([m[1] / t[1] for m, t in pairs])}"
        )


def _print_levels(systems: list[str], found: dict[str, list[tuple[float, float]]]) -> None:
    base = found[systems[0]]
    for spec in systems:
        rows = found[spec]
        ratios = [m[0] / b[0] for m, b in zip(rows, base, strict=True)]
        print(
            f"{spec:40s} TTFT p50 {statistics.median(r[0] for r in rows):7.1f} ms, "
            f"{statistics.median(r[1] for r in rows):6.1f} tok/s; TTFT ratio to {systems[0]} "
            f"per turn {' '.join(f'{r:.2f}' for r in ratios)}, "
            f"median {statistics.median(ratios):.3f}"
        )


def _ratio(ratios: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})"


if __name__ == "__main__":
    main()
