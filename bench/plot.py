"""Plots from benchmark JSON (matplotlib, Agg backend: no display needed).

    python -m bench.plot [bench/results/llm.json] [bench/results/llm.png]

`plot_llm`: output tokens/s and TTFT p50 against concurrency, one line per system, for the
short-chat workload; systems measured in rounds get min-max bars around their median, and
``llama-batched-bench``'s decode rate (the JSON's ``ceiling``) is a dashed line.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"


Point = tuple[int, float, float, float]  # concurrency, value, low, high


def _series(rows: list[dict[str, Any]], key: str) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = defaultdict(list)
    for r in rows:
        value = r.get(key)
        if value is not None and r.get("completed", 1):
            spread = [float(v) for v in r.get(f"{key}_rounds") or [] if v is not None] or [value]
            point = (int(r["concurrency"]), float(value), min(spread), max(spread))
            out[r["system"]].append(point)
    return {system: sorted(points) for system, points in out.items()}


def _ceiling(ax: Any, data: dict[str, Any]) -> None:
    decode = (data.get("ceiling") or {}).get("decode_tok_s") or {}
    if decode:
        xs, ys = zip(*sorted((int(k), float(v)) for k, v in decode.items()), strict=True)
        label = "llama-batched-bench decode (ceiling)"
        ax.plot(xs, ys, linestyle="--", color="black", marker="x", label=label)


def plot_llm(json_path: Path, png_path: Path) -> Path:
    data = json.loads(json_path.read_text())
    rows = [r for r in data["results"] if r.get("workload", "short") == "short"]
    labels: dict[str, str] = data.get("labels", {})
    levels = sorted({int(r["concurrency"]) for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    colors = {system: f"C{i % 10}" for i, system in enumerate(systems)}  # same in both panels
    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (
        (tok_ax, "out_tok_s", "output tokens/s", False),
        (ttft_ax, "ttft_p50_ms", "TTFT p50 (ms, log)", True),
    )
    for ax, key, ylabel, log_y in panels:
        for system, points in _series(rows, key).items():
            xs, ys, lows, highs = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=colors[system], label=labels.get(system, system))
            if any(lo != hi for lo, hi in zip(lows, highs, strict=True)):
                err = [[y - lo for y, lo in zip(ys, lows, strict=True)],
                       [hi - y for y, hi in zip(ys, highs, strict=True)]]  # fmt: skip
                ax.errorbar(xs, ys, yerr=err, fmt="none", color=colors[system], capsize=3)
        ax.set_xscale("log", base=2)
        if levels:
            ax.set_xticks(levels, [str(x) for x in levels])
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    _ceiling(tok_ax, data)
    tok_ax.set_title("throughput")
    ttft_ax.set_title("time to first token")
    tok_ax.legend(fontsize=8)
    workload = data.get("workload", {})
    # the short rows plotted come from the last rerun merged in that had them, if any
    # (bench.llm_report --merge)
    short_reruns = [r for r in data.get("reruns", []) if "short" in r.get("replaced", [])]
    when = short_reruns[-1].get("time") if short_reruns else data.get("time", "")
    fig.suptitle(
        f"{workload.get('model', 'LLM')}, {workload.get('max_tokens', '?')} tokens/request, "
        f"{data.get('cpu_count', '?')} CPUs, {when}",
        fontsize=10,
    )
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "llm.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    print(f"wrote {plot_llm(src, dst)}")


if __name__ == "__main__":
    main()
