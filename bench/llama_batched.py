"""``llama-batched-bench``: llama.cpp's decode ceiling on this machine, and its knobs.

    python -m bench.llama_batched [--npl 16] [--variants default,kvu,fa-on,fa-off] [--rounds 3]

Each variant runs ``llama-batched-bench`` (built by bench/llama_server_build.py from the
llama.cpp modelhost's engine is compiled from) on the demo GGUF: ``-npp`` prompt tokens per
sequence, ``-ntg`` generated tokens, for each ``-npl`` number of parallel sequences; the
decode rate is its ``S_TG`` (generated tokens / decode seconds). Variants run in alternating
rounds (this shared machine drifts by tens of percent over minutes) and report the median.
`bench.llm` calls `batched_bench` once per run for the ceiling line of its plot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

# Extra flags per variant. Our engine today: a KV stream per sequence, flash attention "auto".
VARIANTS: dict[str, list[str]] = {
    "default": [],  # separate KV per sequence, flash attention auto
    "kvu": ["-kvu"],
    "fa-on": ["-fa", "on"],
    "fa-off": ["-fa", "off"],
    "kvu-fa-on": ["-kvu", "-fa", "on"],
    "kvu-fa-off": ["-kvu", "-fa", "off"],
}


def batched_bench(
    npl: list[int],
    *,
    pp: int = 32,
    tg: int = 128,
    seq_ctx: int = 512,
    threads: int | None = None,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One ``llama-batched-bench`` run; one dict per ``npl`` entry (its JSONL fields:
    ``pl``, ``speed_tg`` decode tok/s, ``speed_pp``, ``t_tg``...)."""
    from bench.llama_server_build import ensure_built, runtime_flags
    from bench.llm_systems import demo_gguf

    binary = ensure_built()["llama-batched-bench"]
    cores = threads or os.cpu_count() or 1
    cmd = [str(binary), "-m", str(demo_gguf()), "-c", str(max(npl) * seq_ctx)]
    cmd += ["-b", "2048", "-ub", "512", "-t", str(cores), "-tb", str(cores)]
    cmd += ["-npp", str(pp), "-ntg", str(tg), "-npl", ",".join(map(str, npl))]
    cmd += ["--output-format", "jsonl", *runtime_flags(), *(extra or [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        raise RuntimeError(
            f"llama-batched-bench exited with {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return rows


def compare(
    variants: list[str], npl: list[int], rounds: int, tg: int
) -> dict[str, dict[int, list[float]]]:
    """Decode tok/s of each variant at each npl, per round, variants alternating."""
    got: dict[str, dict[int, list[float]]] = {v: {n: [] for n in npl} for v in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            for row in batched_bench(npl, tg=tg, extra=VARIANTS[variant]):
                got[variant][int(row["pl"])].append(round(float(row["speed_tg"]), 1))
            print(f"  round {r + 1} {variant}: done", file=sys.stderr, flush=True)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npl", default="16", help="comma list of parallel sequence counts")
    ap.add_argument("--variants", default="default,kvu,fa-on,fa-off")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tg", type=int, default=128, help="tokens generated per sequence")
    args = ap.parse_args()
    npl = [int(x) for x in args.npl.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    got = compare(variants, npl, args.rounds, args.tg)
    print("\n| variant | flags | " + " | ".join(f"decode tok/s at {n}" for n in npl) + " |")
    print("|---|---|" + "---|" * len(npl))
    for v in variants:
        cells = [
            f"{statistics.median(got[v][n]):.1f} ({', '.join(map(str, got[v][n]))})" for n in npl
        ]
        print(f"| {v} | {' '.join(VARIANTS[v]) or '—'} | " + " | ".join(cells) + " |")
    print(f"\nmedian of {args.rounds} alternating rounds (each round's value in parentheses)")
    print(json.dumps({"npl": npl, "rounds": got}))


if __name__ == "__main__":
    main()
