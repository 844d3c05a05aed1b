"""LLM serving: modelhost's full path vs. llama.cpp's own server, the raw engine and other
peers (closed loop).

    python -m bench.llm [--systems modelhost,llama-server,batched-bench,engine,...]
                        [--workload short,prefill,mixed,shared | all] [--rounds 3]
                        [--levels 1,4,16,32] [--requests-per-client 4]
                        [--memory-slots 16,32] [--seed-levels 1,4] [--out f.json]

The workload of docs/benchmarks.md (``short``): SmolLM2-135M-Instruct, a fixed list of short
chat questions cycled, chat completion at temperature 0 with 128 output tokens, streamed,
``ignore_eos``; N closed-loop clients per level, each sending ``--requests-per-client``
requests one after the other, after one warm-up pass that is not counted. Other workloads
(prompts built deterministically by bench/llm_prompts.py):

- ``prefill``: ~1,000-token prompts, 64 output tokens, the same levels, 2 requests per
  client; no prompt is sent twice in a run (each measurement starts further on in the
  list), so neither server answers one from its prefix cache;
- ``mixed``: 16 clients of short chats while 2 clients send ~2,000-token prompts (64 output
  tokens) one after the other: TTFT p50/p99 of the short chats, beside the long ones';
- ``shared``: the short chats behind one ~500-token system prompt shared by every client:
  prompt tokens the server reused from its prefix cache (``cached_tokens`` in ``usage``).

modelhost and ``llama-server`` are up side by side (each idle while the other is measured)
and measured in ``--rounds`` alternating rounds per level (the order flips each round): this
shared machine drifts by tens of percent over minutes, and alternating makes a slow spell hit
both alike. Each row is the median of its rounds; the raw rounds are in the JSON. Both get
the same slots (32) and KV context (32 x the workload's per-sequence context). The other
systems run alone afterwards, the short workload only, one run each:

- ``modelhost``: ``modelhost serve`` in a temp home; the GGUF uploaded with
  ``modelhost files upload``, a no-code LLM folder (model.json only) deployed through the
  console API, a session token from model-auth; load on ``<api_url>v1/chat/completions``
  (token check, gateway, worker hop, engine);
- ``llama-server``: llama.cpp's C++ server, built from the llama.cpp vendored in the pinned
  llama-cpp-python sdist (bench/llama_server_build.py, on first use: minutes), ``-np 32
  -t <cores>``, same GGUF;
- ``batched-bench``: ``llama-batched-bench``'s decode tok/s at each level's number of
  sequences, measured in every round of the short workload beside the two servers (the
  median of its rounds; once, alone, when that workload is not run): the ceiling line on
  the plot (bench/llama_batched.py);
- ``engine``: `modelhost.llm.LLMEngine` with N concurrent ``generate()`` calls, no HTTP
  (bench/engine_loop.py, run by bench/llm_engine.py) -- the ceiling; ``plain``
  (opt-in): that file's bare batched llama.cpp loop;
- ``llama-cpp-server``: ``python -m llama_cpp.server`` on the same GGUF;
- ``litserve``: LitServe's OpenAI spec over llama-cpp-python on the same GGUF
  (bench/peers/litserve_llm.py): one worker, one stream at a time;
- ``seed``: the seed tutorial's deployment as a plain FastAPI app (bench/peers/seed_host.py,
  transformers on the HF-format demo folder); no streaming, so TTFT = E2E; its answer's
  generated text is counted with the model's tokenizer (at most 128). It is slow: only
  ``--seed-levels`` with ``--seed-requests-per-client``.

Memory (``--memory-slots``): for each slot count, modelhost (worker) and llama-server are
started alone with that many slots and 512 tokens of context per slot, loaded with as many
short-chat clients (16 output tokens each: the KV cache is allocated up front), and their
peak RSS (VmHWM) read from /proc.

Prints the tables (bench/llm_report.py); writes bench/results/llm.json, bench/results/llm.png
(bench/plot.py) and, when writing to that default path, the README's table between its
``<!-- bench-llm:start/end -->`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import llm_report
from bench.llm_client import Workload, new_client, run_level, run_mixed, summarise
from bench.llm_client import run as run_client
from bench.llm_systems import (
    MAX_SEQS,
    Running,
    Slots,
    SystemFailed,
    start_litserve,
    start_llama_cpp_server,
    start_llama_server,
    start_modelhost,
    start_seed,
)

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
MAX_TOKENS = 128
PAIRED = llm_report.PAIRED  # modelhost, llama-server: up together, alternating rounds
DEFAULT_SYSTEMS = (
    "modelhost", "llama-server", "batched-bench", "engine", "llama-cpp-server", "litserve", "seed",
)  # fmt: skip
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, "plain")
WORKLOADS = ("short", "prefill", "mixed", "shared")
LABELS = {
    "modelhost": "modelhost (token, gateway, worker, engine)",
    "llama-server": "llama.cpp's llama-server (C++)",
    "batched-bench": "llama-batched-bench decode, no server (ceiling)",
    "engine": "modelhost engine, no HTTP (ceiling)",
    "plain": "llama.cpp batched loop, no server",
    "llama-cpp-server": "llama-cpp-python server",
    "seed": "seed: FastAPI + transformers pipeline",
    "litserve": "LitServe + llama-cpp-python (one stream at a time)",
}


def _prompts() -> list[str]:
    from bench.engine_loop import PROMPTS  # the engine benchmark's questions, same order

    return list(PROMPTS)


# One system's measurement at (level, round, first prompt index) in `bench_paired`.
Turn = Callable[[int, int, int], Awaitable[None]]


@dataclass(frozen=True)
class Spec:
    """A workload as this benchmark runs it."""

    name: str
    workload: Workload
    seq_ctx: int  # KV context per slot, for both modelhost and llama-server
    levels: list[int] | None = None  # None: --levels
    long: Workload | None = None  # mixed: what the long-prompt clients send
    long_clients: int = 0
    about: dict[str, Any] = field(default_factory=dict)
    per_client: int | None = None  # None: --requests-per-client


def workload_specs(names: list[str]) -> list[Spec]:
    from bench.llm_prompts import long_prompts, shared_system_prompt

    short = Workload(_prompts(), MAX_TOKENS)
    specs = {
        "short": Spec("short", short, 512, about={"prompt": "short chat question"}),
        "prefill": Spec(
            "prefill",
            Workload(long_prompts(512, 1000), 64),
            1280,
            about={
                "prompt": "~1,000 tokens, each different (none sent twice)",
                "max_tokens": 64,
                "requests_per_client": 2,
            },
            per_client=2,
        ),
        "mixed": Spec(
            "mixed",
            short,
            2304,
            levels=[16],
            long=Workload(long_prompts(256, 2000, seed=1), 64),
            long_clients=2,
            about={"short_clients": 16, "long_clients": 2, "long_prompt": "~2,000 tokens"},
        ),
        "shared": Spec(
            "shared",
            Workload(_prompts(), MAX_TOKENS, system=shared_system_prompt(500)),
            768,
            about={"system_prompt": "~500 tokens, the same for all"},
        ),
    }
    return [specs[n] for n in names]


# --- measuring -------------------------------------------------------------------------------


async def _measure(
    client: Any, running: Running, spec: Spec, level: int, per_client: int, start: int
) -> dict[str, Any]:
    target = running.target
    if spec.long is None:
        results, wall = await run_level(client, target, spec.workload, level, per_client, start)
        return summarise(target.system, level, results, wall, spec.workload.max_tokens)
    short, long, wall = await run_mixed(
        client, target, spec.workload, spec.long, (level, spec.long_clients), per_client, start
    )
    row = summarise(target.system, level, short, wall, spec.workload.max_tokens)
    long_row = summarise(target.system, spec.long_clients, long, wall, spec.long.max_tokens)
    row.update(
        long_requests=long_row["requests"],
        long_errors=long_row["errors"],
        long_ttft_p50_ms=long_row["ttft_p50_ms"],
        long_ttft_p99_ms=long_row["ttft_p99_ms"],
        long_prompt_tokens_p50=long_row["prompt_tokens_p50"],
    )
    return row


def bench_paired(
    runnings: list[Running],
    spec: Spec,
    levels: list[int],
    rounds: int,
    per_client: int,
    ceiling: dict[int, list[float]] | None = None,
) -> list[dict[str, Any]]:
    """Every system at every level, ``rounds`` times, the order flipping each round; one raw
    row per measurement (``round`` set). Each measurement starts further on in the prompt
    list (both systems alike), so that a workload of distinct prompts (``prefill``) does not
    meet a prompt again that a server may still hold in its prefix cache.

    With ``ceiling``, ``llama-batched-bench`` at the level's number of sequences takes its
    turn in every round too (last, then first: the servers idle meanwhile), its decode
    tok/s appended to ``ceiling[level]``: a ceiling measured once, minutes away from the
    servers' rounds, moved 5% with the host between two runs of one session."""

    async def go() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        clients = [new_client(max(levels) + spec.long_clients) for _ in runnings]

        def server_turn(running: Running, client: Any) -> Turn:
            async def turn(level: int, n: int, start: int) -> None:
                row = await _measure(client, running, spec, level, per_client, start)
                row.update(workload=spec.name, round=n)
                rows.append(row)
                _progress(row)

            return turn

        turns = [server_turn(r, c) for r, c in zip(runnings, clients, strict=True)]
        if ceiling is not None:
            turns.append(_ceiling_turn(ceiling))
        try:
            for running, client in zip(runnings, clients, strict=True):
                warm = min(4, max(levels))  # warm-up, not counted
                await run_level(client, running.target, spec.workload, warm, 1)
            start = min(4, max(levels))  # after the warm-up's prompts
            for level in levels:
                for n in range(rounds):
                    for turn in turns if n % 2 == 0 else turns[::-1]:
                        await turn(level, n, start)
                    start += level * per_client
        finally:
            for client in clients:
                await client.close()
        return rows

    return run_client(go())


def _ceiling_turn(into: dict[int, list[float]]) -> Turn:
    """`bench_paired`'s turn of llama-batched-bench: its decode tok/s at the level, kept in
    ``into[level]``."""

    async def turn(level: int, n: int, start: int) -> None:
        got = await asyncio.to_thread(ceiling_at, level)
        into.setdefault(level, []).append(got)
        print(f"  batched-bench npl={level}: {got} tok/s", file=sys.stderr)

    return turn


def bench_http(
    running: Running,
    workload: Workload,
    levels: list[int],
    requests_per_client: int,
) -> list[dict[str, Any]]:
    target = running.target

    async def go() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        async with new_client(max(levels)) as client:
            warm = 1 if target.protocol == "seed" else min(4, max(levels))
            await run_level(client, target, workload, warm, 1)  # warm-up, not counted
            for level in levels:
                results, wall = await run_level(
                    client, target, workload, level, requests_per_client
                )
                row = summarise(target.system, level, results, wall, workload.max_tokens)
                row["workload"] = "short"
                rows.append(row)
                _progress(row)
        return rows

    return run_client(go())


def bench_engine(
    variants: list[str], levels: list[int], requests_per_client: int
) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "bench.llm_engine", "--levels", ",".join(map(str, levels))]
    cmd += ["--waves", str(requests_per_client), "--tokens", str(MAX_TOKENS)]
    cmd += ["--variants", ",".join(variants)]
    done = subprocess.run(cmd, cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemFailed(f"bench.llm_engine exited with {done.returncode} (stderr above)")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    rows: list[dict[str, Any]] = []
    for variant in variants:
        for level in levels:
            got = data["levels"][str(level)][variant]
            rows.append(
                {
                    "workload": "short",
                    "system": variant,
                    "concurrency": level,
                    "requests": got["requests"],
                    "completed": got["requests"],
                    "errors": 0,
                    "short": 0,
                    "wall_s": got["wall_s"],
                    "output_tokens": got["output_tokens"],
                    "out_tok_s": got["out_tok_s"],
                    "req_s": got["req_s"],
                    "wave_tok_s": got["wave_tok_s"],
                }
            )
    return rows


CEILING_TOOL = "llama-batched-bench -npp 32 -ntg 128 (separate KV per sequence, its default)"


def ceiling_at(level: int) -> float:
    """``llama-batched-bench``'s decode tok/s with ``level`` sequences."""
    from bench.llama_batched import batched_bench

    (row,) = batched_bench([level], tg=MAX_TOKENS)
    return round(float(row["speed_tg"]), 1)


def bench_ceiling(levels: list[int]) -> dict[str, Any]:
    """``llama-batched-bench`` once: decode tok/s at each level's number of sequences (when
    the short workload, which measures it in its rounds, is not run)."""
    from bench.llama_batched import batched_bench

    got = batched_bench(levels, tg=MAX_TOKENS)
    return {
        "tool": CEILING_TOOL,
        "decode_tok_s": {str(r["pl"]): round(float(r["speed_tg"]), 1) for r in got},
        "raw": got,
    }


def ceiling_of_rounds(rounds: dict[int, list[float]]) -> dict[str, Any]:
    """The ceiling measured in the short workload's rounds: the median per level."""
    return {
        "tool": CEILING_TOOL,
        "measured": "in every round of the short workload, taking turns with the servers",
        "decode_tok_s": {str(k): round(statistics.median(v), 1) for k, v in rounds.items()},
        "rounds": {str(k): v for k, v in rounds.items()},
    }


def _worker(memory: dict[str, Any]) -> dict[str, Any]:
    """The LLM worker's entry: the gateway's descendant with the largest peak RSS."""
    workers = [w for w in memory.get("workers", []) if w.get("peak_rss_mib")]
    return max(workers, key=lambda w: w["peak_rss_mib"]) if workers else {}


def bench_memory(
    systems: list[str], starters: dict[str, Callable[[Slots], AbstractContextManager[Running]]],
    slot_counts: list[int],
) -> dict[str, Any]:  # fmt: skip
    """Peak RSS of modelhost's worker and of llama-server with each slot count, each started
    alone and loaded with as many short-chat clients (one request of 16 tokens each), and
    their RSS after that load (``<system>_rss``)."""
    out: dict[str, Any] = {}
    workload = Workload(_prompts(), 16)  # the KV cache is allocated up front: short answers do
    for count in slot_counts:
        slots = Slots(count, 512)
        entry: dict[str, Any] = {"kv_cells": slots.kv_cells, "seq_ctx": slots.seq_ctx}
        for system in systems:
            print(f"memory: {system} with {count} slots ...", file=sys.stderr, flush=True)
            with starters[system](slots) as running:
                bench_http(running, workload, [count], 1)
                mem = running.memory()
            proc = _worker(mem) if system == "modelhost" else mem["server"]
            entry[system] = proc.get("peak_rss_mib")
            entry[f"{system}_rss"] = proc.get("rss_mib")
            entry[f"{system}_raw"] = mem
        out[str(count)] = entry
    return out


def _progress(row: dict[str, Any]) -> None:
    tag = f" round {row['round'] + 1}" if "round" in row else ""
    print(
        f"  {row.get('workload', 'short')} {row['system']} c={row['concurrency']}{tag}: "
        f"{row['out_tok_s']} tok/s, TTFT p50 {row.get('ttft_p50_ms')} ms, errors {row['errors']}",
        file=sys.stderr,
        flush=True,
    )


# --- reporting -------------------------------------------------------------------------------


def report(
    rows: list[dict[str, Any]],
    memory: dict[str, Any],
    failures: dict[str, str],
    meta: dict[str, Any],
    out: Path,
    plot: bool,
) -> None:
    data = {**meta, "results": rows, "memory": memory, "failures": failures}
    print("\n" + "\n".join(llm_report.detail_table(rows)))
    print("\n" + llm_report.readme_section(data))
    busy = meta.get("cpus_busy_before", {})
    if any(v > 0.3 for v in busy.values()):
        shown = ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
        print(f"CPUs busy with other work before each phase (noisy run): {shown}")
    for system, why in failures.items():
        print(f"\n{system} FAILED: {why}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"\nwrote {out}")
    if out.resolve() == (RESULTS / "llm.json").resolve() and llm_report.update_readme(README, data):
        print(f"updated the benchmark table in {README}")
    if plot:
        try:
            from bench.plot import plot_llm
        except ImportError as exc:
            print(f"no plot: {exc} (pip install -e '.[bench]')", file=sys.stderr)
            return
        print(f"wrote {plot_llm(out, out.with_suffix('.png'))}")


# --- main ------------------------------------------------------------------------------------


def _busy_cpus(interval: float = 1.0) -> float:
    """How many CPUs were busy over ``interval`` seconds (from /proc/stat), e.g. 1.7 of 2."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 == total0:
        return 0.0
    busy = 1 - (idle1 - idle0) / (total1 - total0)
    return round(busy * (os.cpu_count() or 1), 2)


def cpu_model() -> str | None:
    """The CPU's name from /proc/cpuinfo (results differ between CPU kinds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _note_load(phase: str, load: dict[str, float]) -> None:
    load[phase] = _busy_cpus()
    print(f"measuring {phase} (CPUs busy before it: {load[phase]:.2f}) ...", file=sys.stderr)
    if load[phase] > 0.3:
        print("  warning: something else is using the CPUs; numbers will be noisy", file=sys.stderr)


def _levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels: a comma list of positive integers")
    return levels


def _workloads(text: str) -> list[str]:
    names = list(WORKLOADS) if text == "all" else [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"workloads: comma list of {', '.join(WORKLOADS)} or all")
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma list of systems")
    p.add_argument("--workload", type=_workloads, default=["short"], help="comma list, or all")
    p.add_argument("--levels", type=_levels, default=[1, 4, 16, 32], help="concurrency levels")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of modelhost and llama-server"
    )
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument(
        "--memory-slots",
        default="16,32",
        help="slot counts for the peak-RSS comparison of modelhost and llama-server ('' skips)",
    )
    p.add_argument("--seed-levels", type=_levels, default=[1, 4])
    p.add_argument("--seed-requests-per-client", type=int, default=2)
    p.add_argument(
        "--llama-threads",
        type=int,
        default=None,
        help="llama-cpp-server --n_threads (default: its own, cpu_count // 2)",
    )
    p.add_argument(
        "--llama-no-interrupt",
        action="store_true",
        help="llama-cpp-server --interrupt_requests false (by default a new request ends the "
        "running one's stream early: those answers are counted as short)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "llm.json")
    p.add_argument("--no-plot", action="store_true")
    return p


PairedStarter = Callable[[Slots], AbstractContextManager[Running]]


def main() -> None:
    args = _parser().parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    raw: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    failures: dict[str, str] = {}
    load: dict[str, float] = {}  # CPUs busy (others' work) just before each phase starts
    server_logs: dict[str, str] = {}  # the end of a server's log when it answered errors
    ceiling: dict[str, Any] = {}
    memory_by_slots: dict[str, Any] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    paired = [s for s in PAIRED if s in systems]
    specs = workload_specs(args.workload)
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        logs = Path(tmp)
        paired_starters: dict[str, PairedStarter] = {
            "modelhost": lambda slots: start_modelhost(logs, slots),
            "llama-server": lambda slots: start_llama_server(logs, slots),
        }
        if "llama-server" in systems or "batched-bench" in systems:
            _build_llama(failures)
        in_rounds: dict[int, list[float]] = {}
        for spec in specs if paired else []:
            beside = in_rounds if spec.name == "short" and "batched-bench" in systems else None
            raw += _bench_paired_spec(
                spec, paired, paired_starters, args, load, memory, failures, server_logs, beside
            )
        if in_rounds:
            ceiling = ceiling_of_rounds(in_rounds)
        elif "batched-bench" in systems:
            _note_load("batched-bench", load)
            try:
                ceiling = bench_ceiling(args.levels)
                print(f"  batched-bench decode tok/s: {ceiling['decode_tok_s']}", file=sys.stderr)
            except Exception as exc:
                failures["batched-bench"] = f"{type(exc).__name__}: {exc}"
        alone = [s for s in systems if s not in (*PAIRED, "batched-bench")]
        if "short" in args.workload:
            raw += _bench_alone(alone, args, logs, load, memory, failures, server_logs)
        slot_counts = [int(x) for x in args.memory_slots.split(",") if x.strip()]
        if paired and slot_counts:
            _note_load("memory", load)
            try:
                memory_by_slots = bench_memory(paired, paired_starters, slot_counts)
            except Exception as exc:
                failures["memory"] = f"{type(exc).__name__}: {exc}"
    meta = {
        "time": started,
        "command": "python -m bench.llm " + " ".join(sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpus_busy_before": load,
        "labels": {s: LABELS[s] for s in systems},
        "rounds": args.rounds,
        "workload": {
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF; HF conversion for seed)",
            "prompts": _prompts(),
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "stream": True,
            "ignore_eos": True,
            "levels": args.levels,
            "requests_per_client": args.requests_per_client,
            "seed_levels": args.seed_levels,
            "seed_requests_per_client": args.seed_requests_per_client,
            "warm_up": "one pass (min(4, max level) clients x 1 request; seed: 1) not counted",
        },
        "workloads": {
            s.name: {"seq_ctx": s.seq_ctx, "kv_cells": MAX_SEQS * s.seq_ctx, **s.about}
            for s in specs
        },
        "ceiling": ceiling,
        "memory_by_slots": memory_by_slots,
        "server_logs": server_logs,
    }
    for system, tail in server_logs.items():
        print(f"\n{system} answered errors; the end of its log:\n{tail}", file=sys.stderr)
    report(llm_report.combine(raw), memory, failures, meta, args.out, plot=not args.no_plot)


def _bench_paired_spec(
    spec: Spec,
    paired: list[str],
    starters: dict[str, PairedStarter],
    args: argparse.Namespace,
    load: dict[str, float],
    memory: dict[str, Any],
    failures: dict[str, str],
    server_logs: dict[str, str],
    ceiling: dict[int, list[float]] | None = None,
) -> list[dict[str, Any]]:
    """One workload on modelhost and llama-server, both up, in alternating rounds (with
    ``ceiling``, llama-batched-bench in them too: `bench_paired`)."""
    phase = f"{spec.name}: {', '.join(paired)}"
    _note_load(phase, load)
    try:
        with ExitStack() as stack:
            slots = Slots(MAX_SEQS, spec.seq_ctx)
            runnings = [stack.enter_context(starters[s](slots)) for s in paired]
            levels = spec.levels or args.levels
            per_client = spec.per_client or args.requests_per_client
            rows = bench_paired(runnings, spec, levels, args.rounds, per_client, ceiling)
            for running in runnings:
                system = running.target.system
                memory.setdefault(spec.name, {})[system] = running.memory()
                if any(r["errors"] for r in rows if r["system"] == system):
                    server_logs[f"{spec.name} {system}"] = running.log_tail()
        return rows
    except Exception as exc:  # report it and go on
        failures[phase] = f"{type(exc).__name__}: {exc}"
        print(f"  {phase} failed: {exc!s:.2000}", file=sys.stderr)
        return []


def _build_llama(failures: dict[str, str]) -> None:
    from bench.llama_server_build import BuildError, ensure_built

    try:
        ensure_built()  # first use: minutes, with progress on stderr
    except (BuildError, subprocess.CalledProcessError) as exc:
        failures["llama.cpp build"] = str(exc)


def _bench_alone(
    systems: list[str],
    args: argparse.Namespace,
    logs: Path,
    load: dict[str, float],
    memory: dict[str, Any],
    failures: dict[str, str],
    server_logs: dict[str, str],
) -> list[dict[str, Any]]:
    """The peers other than llama-server, each alone, the short workload, one run."""
    workload = Workload(_prompts(), MAX_TOKENS)
    starters: dict[str, Callable[[], AbstractContextManager[Running]]] = {
        "llama-cpp-server": lambda: start_llama_cpp_server(
            logs, MAX_TOKENS, args.llama_threads, not args.llama_no_interrupt
        ),
        "seed": lambda: start_seed(logs, MAX_TOKENS),
        "litserve": lambda: start_litserve(logs),
    }
    engine_variants: list[str] = [s for s in ("engine", "plain") if s in systems]
    rows: list[dict[str, Any]] = []
    for system in systems:
        if system == "plain" and "engine" in systems:
            continue  # measured beside the engine, in the same process
        _note_load(system, load)
        try:
            if system in ("engine", "plain"):
                rows += bench_engine(engine_variants, args.levels, args.requests_per_client)
                continue
            seed = system == "seed"
            levels = args.seed_levels if seed else args.levels
            per_client = args.seed_requests_per_client if seed else args.requests_per_client
            with starters[system]() as running:
                measured = bench_http(running, workload, levels, per_client)
                memory.setdefault("short", {})[system] = running.memory()
                if any(r["errors"] for r in measured):
                    server_logs[system] = running.log_tail()
            rows += measured
        except Exception as exc:  # report it and go on with the other systems
            failures[system] = f"{type(exc).__name__}: {exc}"
            print(f"  {system} failed: {failures[system][:2000]}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
