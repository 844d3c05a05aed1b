"""LLM serving: modelhost's full path vs. the raw engine and peer servers (closed loop).

    python -m bench.llm [--systems modelhost,engine,llama-cpp-server,litserve,seed]
                        [--levels 1,4,16,32] [--requests-per-client 4]
                        [--seed-levels 1,4] [--seed-requests-per-client 2]

The workload of docs/benchmarks.md: SmolLM2-135M-Instruct, a fixed list of short chat
questions cycled, chat completion at temperature 0 with 128 output tokens, streamed,
``ignore_eos``; N closed-loop clients per level, each sending ``--requests-per-client``
requests one after the other, after one warm-up pass that is not counted. Each system runs
alone (the others stopped), on this machine:

- ``modelhost``: ``modelhost serve`` in a temp home; the GGUF uploaded with
  ``modelhost files upload``, a no-code LLM folder (model.json only) deployed through the
  console API, a session token from model-auth; load on ``<api_url>v1/chat/completions``
  (token check, gateway, worker hop, engine);
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

Prints one markdown table, the per-level ratios and the peak RSS of modelhost's gateway and
worker processes; writes bench/results/llm.json and (bench/plot.py) bench/results/llm.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.llm_client import Workload, new_client, run_level, summarise
from bench.llm_systems import (
    Running,
    SystemFailed,
    start_litserve,
    start_llama_cpp_server,
    start_modelhost,
    start_seed,
)

HERE = Path(__file__).parent
RESULTS = HERE / "results"
MAX_TOKENS = 128
DEFAULT_SYSTEMS = ("modelhost", "engine", "llama-cpp-server", "litserve", "seed")
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, "plain")
LABELS = {
    "modelhost": "modelhost (token, gateway, worker, engine)",
    "engine": "modelhost engine, no HTTP (ceiling)",
    "plain": "llama.cpp batched loop, no server",
    "llama-cpp-server": "llama-cpp-python server",
    "seed": "seed: FastAPI + transformers pipeline",
    "litserve": "LitServe + llama-cpp-python (one stream at a time)",
}


def _prompts() -> list[str]:
    from bench.engine_loop import PROMPTS  # the engine benchmark's questions, same order

    return list(PROMPTS)


# --- measuring -------------------------------------------------------------------------------


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
                rows.append(row)
                _progress(row)
        return rows

    return asyncio.run(go())


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


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['system']} c={row['concurrency']}: {row['out_tok_s']} tok/s, "
        f"TTFT p50 {row.get('ttft_p50_ms')} ms, errors {row['errors']}",
        file=sys.stderr,
        flush=True,
    )


# --- reporting -------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | concurrency | out tok/s | req/s | TTFT p50/p99 ms | ITL p50 ms "
        "| TPOT p50 ms | E2E p50 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = (
            f"{_f(r.get('ttft_p50_ms'), 0)} / {_f(r.get('ttft_p99_ms'), 0)}"
            if r.get("ttft_p50_ms") is not None
            else "—"
        )
        errors = str(r["errors"]) + (f" ({r['short']} short)" if r.get("short") else "")
        cells = [
            r["system"],
            str(r["concurrency"]),
            _f(float(r["out_tok_s"])),
            _f(float(r["req_s"]), 2),
            ttft,
            _f(r.get("itl_p50_ms"), 1),
            _f(r.get("tpot_p50_ms"), 1),
            _f(r.get("e2e_p50_ms"), 0),
            errors,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


RATIO_PEERS = ("engine", "llama-cpp-server", "litserve")


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["system"], r["concurrency"]): r for r in rows}
    out = []
    for level in sorted({c for s, c in by if s == "modelhost"}):
        mine = by[("modelhost", level)]["out_tok_s"]
        entry: dict[str, Any] = {"concurrency": level}
        for peer in RATIO_PEERS:
            other = by.get((peer, level))
            ratio = mine / other["out_tok_s"] if other and other["out_tok_s"] else None
            entry[f"modelhost_over_{peer.replace('-', '_')}"] = (
                round(ratio, 3) if ratio is not None else None
            )
        out.append(entry)
    return out


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    mh = memory.get("modelhost")
    if not mh:
        return []
    lines = [f"modelhost gateway peak RSS: {_f(mh['gateway']['peak_rss_mib'])} MiB"]
    for w in mh["workers"]:
        lines.append(
            f"modelhost worker pid {w['pid']} peak RSS: {_f(w['peak_rss_mib'])} MiB ({w['cmd']})"
        )
    return lines


def report(
    rows: list[dict[str, Any]],
    memory: dict[str, Any],
    failures: dict[str, str],
    meta: dict[str, Any],
    out: Path,
    plot: bool,
) -> None:
    print("\n" + "\n".join(_table(rows)))
    ratios = _ratios(rows)
    if ratios:
        heads = " | ".join(f"modelhost ÷ {p} (tok/s)" for p in RATIO_PEERS)
        print(f"\n| concurrency | {heads} |")
        print("|---|" + "---|" * len(RATIO_PEERS))
        for r in ratios:
            cells = [_f(r[f"modelhost_over_{p.replace('-', '_')}"], 2) + "x" for p in RATIO_PEERS]
            print(f"| {r['concurrency']} | " + " | ".join(cells).replace("—x", "—") + " |")
    for line in _memory_lines(memory):
        print(line)
    busy = meta.get("cpus_busy_before", {})
    if any(v > 0.3 for v in busy.values()):
        shown = ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
        print(f"CPUs busy with other work before each system (noisy run): {shown}")
    for system, why in failures.items():
        print(f"\n{system} FAILED: {why}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "results": rows, "ratios": ratios, "memory": memory, "failures": failures}
    out.write_text(json.dumps(data, indent=1))
    print(f"\nwrote {out}")
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


def _levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels: a comma list of positive integers")
    return levels


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma list of systems")
    p.add_argument("--levels", type=_levels, default=[1, 4, 16, 32], help="concurrency levels")
    p.add_argument("--requests-per-client", type=int, default=4)
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


def main() -> None:
    args = _parser().parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    workload = Workload(_prompts(), MAX_TOKENS)
    rows: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    failures: dict[str, str] = {}
    load: dict[str, float] = {}  # CPUs busy (others' work) just before each system starts
    server_logs: dict[str, str] = {}  # the end of a server's log when it answered errors
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    engine_variants = [s for s in ("engine", "plain") if s in systems]
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        logs = Path(tmp)
        starters: dict[str, Callable[[], AbstractContextManager[Running]]] = {
            "modelhost": lambda: start_modelhost(logs),
            "llama-cpp-server": lambda: start_llama_cpp_server(
                logs, MAX_TOKENS, args.llama_threads, not args.llama_no_interrupt
            ),
            "seed": lambda: start_seed(logs, MAX_TOKENS),
            "litserve": lambda: start_litserve(logs),
        }
        for system in systems:
            if system == "plain" and "engine" in systems:
                continue  # measured beside the engine, in the same process
            load[system] = _busy_cpus()
            print(
                f"measuring {system} (CPUs busy before it: {load[system]:.2f}) ...",
                file=sys.stderr,
                flush=True,
            )
            if load[system] > 0.3:
                print(
                    "  warning: something else is using the CPUs; numbers will be noisy",
                    file=sys.stderr,
                )
            try:
                if system in ("engine", "plain"):
                    rows += bench_engine(engine_variants, args.levels, args.requests_per_client)
                    continue
                seed = system == "seed"
                levels = args.seed_levels if seed else args.levels
                per_client = args.seed_requests_per_client if seed else args.requests_per_client
                with starters[system]() as running:
                    measured = bench_http(running, workload, levels, per_client)
                    memory[system] = running.memory()
                    if any(r["errors"] for r in measured):
                        server_logs[system] = running.log_tail()
                rows += measured
            except Exception as exc:  # report it and go on with the other systems
                failures[system] = f"{type(exc).__name__}: {exc}"
                print(f"  {system} failed: {failures[system][:2000]}", file=sys.stderr)
    meta = {
        "time": started,
        "command": "python -m bench.llm " + " ".join(sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpus_busy_before": load,
        "labels": {s: LABELS[s] for s in systems},
        "workload": {
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF; HF conversion for seed)",
            "prompts": list(workload.prompts),
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
    }
    meta["server_logs"] = server_logs
    for system, tail in server_logs.items():
        print(f"\n{system} answered errors; the end of its log:\n{tail}", file=sys.stderr)
    report(rows, memory, failures, meta, args.out, plot=not args.no_plot)


if __name__ == "__main__":
    main()
