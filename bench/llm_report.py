"""`bench.llm`'s results: rounds combined into one row, the printed tables, the README's.

A system measured in alternating rounds gets one row per (workload, level): the median of
each rate and latency over its rounds, the counts summed, each round's tokens/s and TTFT
p50 listed, and the spread ((max - min) / median of tokens/s). The raw rounds stay in the
JSON under ``raw_rounds``.

    python -m bench.llm_report [bench/results/llm.json] [--readme README.md]

prints the README section rendered from a results file, or writes it between the
``<!-- bench-llm:start -->`` / ``<!-- bench-llm:end -->`` markers of ``--readme``.

    python -m bench.llm_report bench/results/llm.json --merge rerun.json

puts a partial rerun (e.g. ``--workload short``) into the results file: its workloads'
rows, its decode ceiling and its memory rows replace the old ones, the rest stay, and
``reruns`` records what came from which command and when (the README says so).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

MEDIAN_KEYS = (
    "out_tok_s", "req_s", "wall_s",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
    "long_ttft_p50_ms", "long_ttft_p99_ms", "prompt_tokens_p50",
)  # fmt: skip
SUM_KEYS = (
    "requests", "completed", "errors", "short", "output_tokens", "prompt_tokens",
    "cached_prompt_tokens", "long_requests", "long_errors",
)  # fmt: skip
PAIRED = ("modelhost", "llama-server")  # measured in alternating rounds, in this order
START, END = "<!-- bench-llm:start -->", "<!-- bench-llm:end -->"


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def combine_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a system's rounds at one level (see the module docstring)."""
    row = {k: v for k, v in runs[0].items() if k not in ("round",)}
    for key in MEDIAN_KEYS:
        if any(key in r for r in runs):
            row[key] = _median([r.get(key) for r in runs])
    for key in SUM_KEYS:
        values = [r.get(key) for r in runs]
        if any(key in r for r in runs):
            row[key] = None if any(v is None for v in values) else sum(values)
    row["error_samples"] = sorted({e for r in runs for e in r.get("error_samples", [])})[:3]
    row["rounds"] = len(runs)
    tok = [float(r["out_tok_s"]) for r in runs]
    row["out_tok_s_rounds"] = tok
    row["ttft_p50_ms_rounds"] = [r.get("ttft_p50_ms") for r in runs]
    med = statistics.median(tok)
    row["spread_pct"] = round(100 * (max(tok) - min(tok)) / med, 1) if med else None
    if row.get("prompt_tokens") and row.get("cached_prompt_tokens") is not None:
        row["prefill_saved_pct"] = round(
            100 * row["cached_prompt_tokens"] / row["prompt_tokens"], 1
        )
    row["raw_rounds"] = runs
    return row


def combine(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by (workload, system, concurrency), in first-seen order, combined."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in raw:
        groups.setdefault((r.get("workload", "short"), r["system"], r["concurrency"]), []).append(r)
    return [combine_rounds(runs) for runs in groups.values()]


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _tok(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    cell = _f(float(r["out_tok_s"]))
    if r.get("rounds", 1) > 1 and r.get("spread_pct") is not None:
        cell += f" ±{r['spread_pct'] / 2:.0f}%"
    return cell


def detail_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every row: the printed table of a run."""
    lines = [
        "| workload | system | clients | out tok/s (rounds) | TTFT p50/p99 ms | ITL p50 ms "
        "| E2E p50 ms | prompt tok p50 | cached prompt tok | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rounds = r.get("out_tok_s_rounds")
        tok = _f(float(r["out_tok_s"])) + (f" ({', '.join(map(str, rounds))})" if rounds else "")
        ttft = f"{_f(r.get('ttft_p50_ms'), 0)} / {_f(r.get('ttft_p99_ms'), 0)}"
        errors = str(r["errors"]) + (f" ({r['short']} short)" if r.get("short") else "")
        cells = [
            r.get("workload", "short"), r["system"], str(r["concurrency"]), tok, ttft,
            _f(r.get("itl_p50_ms")), _f(r.get("e2e_p50_ms"), 0), _f(r.get("prompt_tokens_p50")),
            _f(r.get("cached_prompt_tokens")), errors,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _by(rows: list[dict[str, Any]], workload: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {
        (r["system"], r["concurrency"]): r for r in rows if r.get("workload", "short") == workload
    }


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "out_tok_s") -> str:
    if not a or not b or not a.get(key) or not b.get(key):
        return "—"
    return f"{float(a[key]) / float(b[key]):.2f}x"


def throughput_table(data: dict[str, Any], workload: str = "short") -> list[str]:
    """One row per client count: modelhost, llama-server (first peer), the ratio, the other
    peers, TTFT p50 of modelhost / llama-server."""
    rows = data["results"]
    by = _by(rows, workload)
    systems = list(
        dict.fromkeys(r["system"] for r in rows if r.get("workload", "short") == workload)
    )
    peers = [s for s in systems if s not in PAIRED]
    labels = data.get("labels", {})
    head = ["clients", "modelhost out tok/s", "llama-server", "modelhost / llama-server"]
    head += [labels.get(p, p) for p in peers] + ["TTFT p50 ms modelhost / llama-server"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in sorted({c for _, c in by}):
        mh, ls = by.get(("modelhost", level)), by.get(("llama-server", level))
        cells = [str(level), _tok(mh), _tok(ls), _ratio(mh, ls)]
        cells += [_tok(by.get((p, level))) for p in peers]
        cells.append(
            f"{_f((mh or {}).get('ttft_p50_ms'), 0)} / {_f((ls or {}).get('ttft_p50_ms'), 0)}"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def workload_lines(data: dict[str, Any]) -> list[str]:
    """The prefill-heavy, mixed and shared-prefix workloads, modelhost beside llama-server."""
    rows = data["results"]
    out: list[str] = []
    if any(r.get("workload") == "prefill" for r in rows):
        out += ["", "Prefill-heavy (~1,000-token prompts, 64 output tokens):", ""]
        out += throughput_table(data, "prefill")
    mixed = _by(rows, "mixed")
    if mixed:
        out += ["", "Mixed (short chats while 2 clients send ~2,000-token prompts):", ""]
        out += [
            "| system | short-chat clients | short TTFT p50 / p99 ms | long-prompt TTFT p50 ms "
            "| short out tok/s |",
            "|---|---|---|---|---|",
        ]
        for (system, level), r in mixed.items():
            ttft = f"{_f(r.get('ttft_p50_ms'), 0)} / {_f(r.get('ttft_p99_ms'), 0)}"
            out.append(
                f"| {system} | {level} | {ttft} | {_f(r.get('long_ttft_p50_ms'), 0)} | {_tok(r)} |"
            )
    shared = _by(rows, "shared")
    if shared:
        out += ["", "Shared ~500-token system prompt (prefix reuse):", ""]
        out += [
            "| system | clients | out tok/s | TTFT p50 ms | prompt tokens | reused from cache |",
            "|---|---|---|---|---|---|",
        ]
        for (system, level), r in shared.items():
            saved = r.get("prefill_saved_pct")
            reused = (
                "not reported"
                if r.get("cached_prompt_tokens") is None
                else (f"{_f(r['cached_prompt_tokens'])} ({_f(saved)}%)")
            )
            out.append(
                f"| {system} | {level} | {_tok(r)} | {_f(r.get('ttft_p50_ms'), 0)} "
                f"| {_f(r.get('prompt_tokens'))} | {reused} |"
            )
    return out


def ceiling_line(data: dict[str, Any]) -> list[str]:
    """The decode ceiling per level and each server's share of it (short chats); measured in
    the short workload's rounds: the median, ± half the rounds' spread."""
    ceiling = data.get("ceiling") or {}
    if not ceiling.get("decode_tok_s"):
        return []
    pairs = sorted((int(k), float(v)) for k, v in ceiling["decode_tok_s"].items())
    rounds = ceiling.get("rounds") or {}
    cells = []
    for level, value in pairs:
        got = rounds.get(str(level)) or []
        spread = f" ±{50 * (max(got) - min(got)) / value:.0f}%" if len(got) > 1 else ""
        cells.append(_f(value) + spread)
    levels = " / ".join(str(k) for k, _ in pairs)
    how = (
        f" (median of {max(map(len, rounds.values()))} rounds, beside the servers)"
        if rounds
        else ""
    )
    line = f"`llama-batched-bench` decode ceiling{how}: {' / '.join(cells)} tok/s"
    line += f" at {levels} sequences"
    short = _by(data["results"], "short")
    shares = []
    for system in PAIRED:
        ratios = [_ratio(short.get((system, level)), {"out_tok_s": v}) for level, v in pairs]
        if any(r != "—" for r in ratios):
            shares.append(f"{system} {' / '.join(ratios)}")
    if shares:
        line += f"; of it: {', '.join(shares)}"
    return ["", line + "."]


def memory_lines(data: dict[str, Any]) -> list[str]:
    mem = data.get("memory_by_slots") or {}
    if not mem:
        return []
    lines = [
        "",
        "| slots | KV cells | modelhost worker peak RSS MiB | llama-server peak RSS MiB "
        "| modelhost worker RSS after the load | llama-server RSS after the load |",
        "|---|---|---|---|---|---|",
    ]
    for slots, entry in sorted(mem.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {slots} | {entry.get('kv_cells', '—')} | {_f(entry.get('modelhost'))} "
            f"| {_f(entry.get('llama-server'))} | {_f(entry.get('modelhost_rss'))} "
            f"| {_f(entry.get('llama-server_rss'))} |"
        )
    return lines


def readme_section(data: dict[str, Any]) -> str:
    wl = data.get("workload", {})
    rounds = int(data.get("rounds", 1))
    head = (
        f"Generated by `{data.get('command', 'python -m bench.llm').strip()}` on "
        f"{data.get('time', '?')} ({data.get('cpu_count', '?')} CPUs"
        f"{', ' + data['cpu_model'] if data.get('cpu_model') else ''}): short chats, "
        f"{wl.get('max_tokens', 128)} output tokens."
    )
    if any(r["system"] == "llama-server" for r in data["results"]):
        head += (
            f" modelhost and llama-server: median of {rounds} alternating rounds per level"
            " (± half the spread of the rounds' tokens/s); other peers: one run each."
        )
    lines = [head, *rerun_lines(data), "", *throughput_table(data), *ceiling_line(data)]
    lines += workload_lines(data)
    lines += memory_lines(data)
    return "\n".join(lines)


def merge(base: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """`base` with the rows of `rerun`'s workloads, its ceiling and memory rows, replaced."""
    workloads = list(rerun.get("workloads") or ["short"])
    out = dict(base)
    kept = [r for r in base["results"] if r.get("workload", "short") not in workloads]
    out["results"] = kept + list(rerun["results"])
    replaced = list(workloads)
    out["memory"] = {**base.get("memory", {}), **rerun.get("memory", {})}  # RSS per workload
    if (rerun.get("ceiling") or {}).get("decode_tok_s"):
        out["ceiling"] = rerun["ceiling"]
        replaced.append("decode ceiling")
    if rerun.get("memory_by_slots"):
        out["memory_by_slots"] = {**base.get("memory_by_slots", {}), **rerun["memory_by_slots"]}
        replaced.append("memory")
    entry = {"time": rerun.get("time"), "command": rerun.get("command"), "replaced": replaced}
    out["reruns"] = [*base.get("reruns", []), entry]
    return out


def rerun_lines(data: dict[str, Any]) -> list[str]:
    lines = [] if not data.get("reruns") else ["", "The rows not named below are from that run."]
    for r in data.get("reruns") or []:
        lines += [
            "",
            f"Rerun on {r.get('time', '?')} with `{str(r.get('command', '?')).strip()}`: "
            f"{', '.join(r.get('replaced', []))} rows from that run.",
        ]
    return lines


def update_readme(readme: Path, data: dict[str, Any]) -> bool:
    """Replace the text between the markers; False when the README has no markers."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(START)] + "\n" + readme_section(data) + "\n" + text[end:]
    readme.write_text(new)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", type=Path, default=Path("bench/results/llm.json"))
    ap.add_argument("--readme", type=Path, help="write the section into this README")
    ap.add_argument("--merge", type=Path, help="a partial rerun to put into the results file")
    args = ap.parse_args()
    data = json.loads(args.json.read_text())
    if args.merge is not None:
        data = merge(data, json.loads(args.merge.read_text()))
        args.json.write_text(json.dumps(data, indent=1))
    if args.readme is None:
        print(readme_section(data))
    elif not update_readme(args.readme, data):
        raise SystemExit(f"{args.readme} has no {START} ... {END} markers")


if __name__ == "__main__":
    main()
