"""Platform overhead: an echo model through modelhost's full path vs. bare and peer servers.

    python -m bench.overhead [--duration 10] [--rounds 3] [--only modelhost,starlette,...]

Measured with `wrk -t1 -c64` posting a small JSON body. modelhost's path includes the
session-token check, routing, x-prt-* headers, metrics counters, request id, body limit and
the hop to the worker process. modelhost (1 and 2 workers) and the bare Starlette echo run
side by side, idle while another is measured, in `--rounds` alternating rounds: this is a
shared virtual machine whose speed drifts by tens of percent over minutes, and alternating
makes a slow spell hit every system alike. Each reports its median round. LitServe and Ray
Serve run alone afterwards (their idle processes are not idle). Prints a table with ratios
and writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from bench.procs import server_process
from bench.wrk import WrkResult, run_wrk

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ECHO_MODEL = "async def predict(payload_dict: dict, **kwargs):\n    return payload_dict\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(
    url: str, timeout: float = 120, ok: Callable[[int], bool] = lambda s: s < 500
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ok(httpx.post(url, json={"x": 1}, timeout=2).status_code):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Target:
    system: str
    url: str
    token: str | None = None


@contextmanager
def serve_modelhost(replicas: int, extra_env: dict[str, str] | None = None) -> Iterator[Target]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "MODELHOST_HOME": home,
            "MODELHOST_PORT": str(port),
            "MODELHOST_ADMIN_PASSWORD": "bench-password",
            "MODELHOST_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
        with server_process([sys.executable, "-m", "modelhost.cli", "serve"], env=env):
            url = f"http://127.0.0.1:{port}"
            _wait_http(url + "/healthz", ok=lambda s: s == 405 or s == 200)
            access = httpx.post(
                url + "/console/api/auth/",
                json={"email": "admin@modelhost.local", "password": "bench-password"},
            ).json()["access"]
            admin = {"authorization": f"Bearer {access}"}
            httpx.post(
                url + "/console/api/modelhost/deployments/",
                json={"key": "echo-depl", "replicas": replicas},
                headers=admin,
            )
            folder = Path(home) / "echo"
            folder.mkdir()
            (folder / "model.py").write_text(ECHO_MODEL)
            from modelhost.client._packing import pack_model_dir

            deployed = httpx.post(
                url + "/console/api/modelhost/deploy/",
                params={"deployment": "echo-depl", "prefix": "bench", "name": "echo"},
                content=pack_model_dir(folder),
                headers=admin,
                timeout=120,
            ).json()
            token = httpx.request(
                "GET",
                url + "/console/api/modelhost/model-auth/",
                json={"model_url": deployed["api_url"]},
                headers=admin,
            ).json()["token"]
            name = "modelhost" + (f" ({replicas} workers)" if replicas > 1 else "")
            yield Target(name, deployed["api_url"], token)


@contextmanager
def serve_starlette() -> Iterator[Target]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.peers.starlette_echo:app",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with server_process(cmd):
        url = f"http://127.0.0.1:{port}/echo/"
        _wait_http(url)
        yield Target("bare Starlette echo", url)


@contextmanager
def serve_litserve() -> Iterator[Target]:
    port = _free_port()
    script = str(HERE / "peers" / "litserve_echo.py")
    with server_process([sys.executable, script, str(port)], leftovers=script):
        url = f"http://127.0.0.1:{port}/predict"
        _wait_http(url)
        yield Target("LitServe echo", url)


@contextmanager
def serve_rayserve() -> Iterator[Target]:
    port = _free_port()
    script = str(HERE / "peers" / "rayserve_echo.py")
    with server_process([sys.executable, script, str(port)], leftovers=script):
        url = f"http://127.0.0.1:{port}/echo"
        try:
            _wait_http(url, timeout=180, ok=lambda s: s == 200)
            yield Target("Ray Serve echo", url)
        finally:
            ray = Path(sys.executable).with_name("ray")  # the venv's, even if not on PATH
            subprocess.run(
                [str(ray) if ray.exists() else "ray", "stop", "--force"],
                capture_output=True,
                check=False,
            )


# Light servers run side by side and are measured in alternating rounds, so a slow spell of
# this (shared, virtual) machine hits them alike; the heavy peers run alone, one at a time.
INTERLEAVED: dict[str, Callable[[], AbstractContextManager[Target]]] = {
    "modelhost": lambda: serve_modelhost(1),
    "modelhost2": lambda: serve_modelhost(2),
    "starlette": serve_starlette,
}
ALONE: dict[str, Callable[[], AbstractContextManager[Target]]] = {
    "litserve": serve_litserve,
    "rayserve": serve_rayserve,
}
SYSTEMS = [*INTERLEAVED, *ALONE]


def measure_rounds(targets: list[Target], duration: int, rounds: int) -> list[WrkResult]:
    """Warm each target up, then `rounds` measured runs each, in alternating order; a
    system's result is its median round by requests/s (errors are summed over rounds)."""
    for t in targets:
        run_wrk(t.system, t.url, t.token, duration_s=2)
    runs: dict[str, list[WrkResult]] = {t.system: [] for t in targets}
    for n in range(rounds):
        order = targets if n % 2 == 0 else targets[::-1]
        for t in order:
            runs[t.system].append(run_wrk(t.system, t.url, t.token, duration_s=duration))
    results = []
    for t in targets:
        done = sorted(runs[t.system], key=lambda r: r.rps)
        median = done[len(done) // 2]
        results.append(
            replace(
                median,
                errors=sum(r.errors for r in done),
                rounds=[round(r.rps) for r in runs[t.system]],
            )
        )
    return results


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds for modelhost and Starlette"
    )
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset")
    args = parser.parse_args()
    chosen = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    results: list[WrkResult] = []
    with ExitStack() as stack:
        targets = []
        for key in (k for k in chosen if k in INTERLEAVED):
            print(f"starting {key} ...", file=sys.stderr, flush=True)
            targets.append(stack.enter_context(INTERLEAVED[key]()))
        if targets:
            print(
                f"measuring {', '.join(t.system for t in targets)}: "
                f"{args.rounds} alternating rounds of {args.duration} s ...",
                file=sys.stderr,
                flush=True,
            )
            results += measure_rounds(targets, args.duration, args.rounds)
    for key in (k for k in chosen if k in ALONE):
        needs = {"litserve": "litserve", "rayserve": "ray"}[key]
        if not _importable(needs):
            print(
                f"skipping {key}: `{needs}` is not installed (pip install -e '.[bench]')",
                file=sys.stderr,
            )
            continue
        print(f"measuring {key} alone ...", file=sys.stderr, flush=True)
        with ALONE[key]() as target:
            results += measure_rounds([target], args.duration, 1)
    _report(results, args.rounds)


def _report(results: list[WrkResult], rounds: int) -> None:
    by = {r.system: r for r in results}
    base = by.get("modelhost")
    print("\n| system | requests/s | p50 ms | p99 ms | errors | modelhost ÷ system |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{base.rps / r.rps:.2f}x" if base and r.rps else "—"
        row = [
            r.system,
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
            ratio,
        ]
        print("| " + " | ".join(row) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "overhead.json"
    out.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cpu_count": os.cpu_count(),
                "rounds": rounds,
                "load": "wrk -t1 -c64, POST of a small JSON body, keep-alive",
                "results": [r.as_dict() for r in results],
            },
            indent=1,
        )
    )
    print(
        f"\nmodelhost and Starlette: median of {rounds} alternating rounds "
        f"(requests/s of each round in the JSON); LitServe and Ray Serve: one run each."
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
