"""A bounded soak: mixed traffic against a real server while faults are injected.

    python -m bench.soak [--duration 300] [--clients 8] [--every 4] [--deadline 30]
    make soak            (SOAK_S=300)

A `modelhost serve` process (`MODELHOST_KEEP_VERSIONS=1`, so every redeploy retires the old
version through the drain) serves three small models: `plain` (async echo), `stream` (an
async generator) and `slow` (a sync predict sleeping up to 0.4 s in the runner's threads).
`--clients` tasks send a random mix of predicts, streams, `?get_meta=true` and console calls;
every `--every` seconds a fault is injected, alternately kill -9 of one worker of a random
model and a redeploy of a random model. A warm-up without faults comes first; the server's
file descriptors and processes are counted from /proc after it and again at the end.

PASS when all of these hold (exit status 1 otherwise):
  1. no request lost: every answer is the model's correct one, or a 503 with Retry-After,
     or (streams only) a stream cut while a worker of its model was being killed; never
     another status, a wrong body, a connection error, or no answer within `--deadline`;
  2. faults were really injected (at least one kill and one redeploy), every redeploy
     answered 200, and every model serves again afterwards (`/readyz` 200);
  3. no leaked process: exactly one worker per model, no fetch process, no unreaped child;
  4. no leaked file descriptor: the server's open fds at most `--fd-tolerance` above the
     count after the warm-up;
  5. SIGTERM ends the server with exit status 0, and no worker outlives it.
Prints a summary table and writes bench/results/soak.json (`--results` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import soak_procs

RESULTS = Path(__file__).parent / "results"
ADMIN = ("admin@modelhost.local", "soak-admin-password")
MODELS = {
    "plain": "async def predict(payload_dict: dict, **kwargs):\n    return payload_dict\n",
    "stream": (
        "import asyncio\n\n\n"
        "async def predict(payload_dict: dict, **kwargs):\n"
        "    for i in range(int(payload_dict['n'])):\n"
        "        await asyncio.sleep(0.02)\n"
        "        yield f'piece {i}\\n'\n"
    ),
    "slow": (
        "import time\n\n\n"
        "def predict(payload_dict: dict, **kwargs):\n"
        "    time.sleep(float(payload_dict['sleep']))\n"
        "    return {'slept': payload_dict['sleep']}\n"
    ),
}
PREFIX = "soak"
# Restarts after repeated kills wait at most this long (the default, 30 s, would leave a
# model that is killed every few seconds down most of the soak: all 503s, little traffic).
SERVER_ENV = {
    "MODELHOST_KEEP_VERSIONS": "1",
    "MODELHOST_WORKER_RESTART_BACKOFF_MAX_S": "2",
    "MODELHOST_LOG_LEVEL": "warning",
    "MODELHOST_REVOCATION_POLL_S": "1",
}


# --- outcomes ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcome counts per request kind; failures keep a few examples for the report."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    kills: list[tuple[str, float]] = field(default_factory=list)  # (model, when)
    redeploys: Counter[str] = field(default_factory=Counter)  # "ok" / "failed: ..."

    def add(self, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.counts[(kind, outcome)] += 1
        if outcome == "ok":
            self.latencies.setdefault(kind, []).append(seconds)
        if outcome.startswith("LOST") and len(self.examples) < 20:
            self.examples.append(f"{kind}: {outcome}: {detail[:300]}")

    def killed_during(self, model: str, start: float, end: float) -> bool:
        return any(m == model and start - 0.5 <= t <= end + 0.5 for m, t in self.kills)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def lost(self) -> int:
        return sum(n for (_, outcome), n in self.counts.items() if outcome.startswith("LOST"))


# --- the server -------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Soaked:
    """The server under test and what the clients need to call it."""

    home: Path
    url: str
    proc: subprocess.Popen[bytes]
    admin_token: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)

    def model_url(self, model: str) -> str:
        return f"{self.url}/{PREFIX}/{model}/"

    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}


def start_server(home: Path) -> Soaked:
    port = _free_port()
    env = {
        **os.environ,
        **SERVER_ENV,
        "MODELHOST_HOME": str(home),
        "MODELHOST_PORT": str(port),
        "MODELHOST_ADMIN_PASSWORD": ADMIN[1],
    }
    log = (home / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Soaked(home, f"http://127.0.0.1:{port}", proc)
    _poll(lambda: _get_ok(server.url + "/healthz", proc), "the server answers /healthz", 120)
    login = {"email": ADMIN[0], "password": ADMIN[1]}
    r = httpx.post(server.url + "/console/api/auth/", json=login)
    r.raise_for_status()
    server.admin_token = r.json()["access"]
    return server


def _get_ok(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the server exited with status {proc.returncode}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _poll(check: object, what: str, deadline_s: float) -> None:
    """`check()` until truthy, at most `deadline_s` seconds (a deadline, never a sleep)."""
    assert callable(check)
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {deadline_s} s: {what}")
        time.sleep(0.2)


async def deploy(client: httpx.AsyncClient, server: Soaked, model: str) -> str:
    """Deploy (or redeploy) `model`; "ok" or why not."""
    from modelhost.client._packing import pack_model_dir

    try:
        r = await client.post(
            server.url + "/console/api/modelhost/deploy/",
            params={"deployment": "soak-depl", "prefix": PREFIX, "name": model},
            content=pack_model_dir(server.folders[model]),
            headers={**server.admin(), "content-type": "application/gzip"},
            timeout=300,
        )
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__} {exc}"
    if r.status_code != 200 or r.json().get("state") != "ready":
        return f"failed: {r.status_code} {r.text[:200]}"
    return "ok"


async def setup_models(server: Soaked, work: Path) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for model, source in MODELS.items():
            folder = work / model
            folder.mkdir()
            (folder / "model.py").write_text(source)
            server.folders[model] = folder
            outcome = await deploy(client, server, model)
            if outcome != "ok":
                raise RuntimeError(f"deploying {model}: {outcome}")
            r = await client.post(
                server.url + "/console/api/modelhost/model-auth/",
                json={"model_url": server.model_url(model)},
                headers=server.admin(),
            )
            r.raise_for_status()
            server.tokens[model] = r.json()["token"]


# --- traffic ----------------------------------------------------------------------------


def _is_retry_503(r: httpx.Response) -> bool:
    return r.status_code == 503 and r.headers.get("retry-after", "").isdigit()


async def _unary(client: httpx.AsyncClient, server: Soaked, tally: Tally, kind: str) -> None:
    model = "plain" if kind in ("plain", "meta") else "slow"
    headers = {"authorization": f"Bearer {server.tokens[model]}"}
    if kind == "plain":
        payload: dict[str, object] = {"i": random.randrange(10**9), "text": "x" * 64}
        expected: object = payload
    else:
        sleep = round(random.uniform(0.0, 0.4), 3)
        payload, expected = {"sleep": sleep}, {"slept": sleep}
    url = server.model_url(model) + ("?get_meta=true" if kind == "meta" else "")
    started = time.monotonic()
    try:
        if kind == "meta":
            r = await client.get(url, headers=headers)
        else:
            r = await client.post(url, json=payload, headers=headers)
    except httpx.TimeoutException as exc:
        return tally.add(kind, "LOST: no answer within the deadline", 0, repr(exc))
    except httpx.HTTPError as exc:
        return tally.add(kind, "LOST: connection error", 0, repr(exc))
    seconds = time.monotonic() - started
    if _is_retry_503(r):
        return tally.add(kind, "503 + Retry-After", seconds)
    if r.status_code != 200:
        return tally.add(kind, f"LOST: status {r.status_code}", seconds, r.text)
    body = r.json()
    good = body.get("name") == model if kind == "meta" else body == expected
    tally.add(kind, "ok" if good else "LOST: wrong body", seconds, r.text)


async def _stream(client: httpx.AsyncClient, server: Soaked, tally: Tally) -> None:
    n = random.randint(5, 30)
    headers = {"authorization": f"Bearer {server.tokens['stream']}"}
    expected = "".join(f"piece {i}\n" for i in range(n))
    text, status, retry = "", 0, False
    started = time.monotonic()
    try:
        async with client.stream(
            "POST", server.model_url("stream"), json={"n": n}, headers=headers
        ) as r:
            status, retry = r.status_code, _is_retry_503(r)
            async for piece in r.aiter_text():
                text += piece
    except httpx.TimeoutException as exc:
        return tally.add("stream", "LOST: no answer within the deadline", 0, repr(exc))
    except httpx.HTTPError as exc:
        if status == 200 and tally.killed_during("stream", started, time.monotonic()):
            return tally.add("stream", "cut by a kill", 0)
        return tally.add("stream", "LOST: connection error", 0, f"{exc!r} after {text!r}")
    seconds = time.monotonic() - started
    if retry:
        return tally.add("stream", "503 + Retry-After", seconds)
    if status != 200:
        return tally.add("stream", f"LOST: status {status}", seconds, text)
    tally.add("stream", "ok" if text == expected else "LOST: wrong body", seconds, text)


async def _console(client: httpx.AsyncClient, server: Soaked, tally: Tally) -> None:
    started = time.monotonic()
    try:
        r = await client.get(server.url + "/console/api/modelhost/models/", headers=server.admin())
    except httpx.HTTPError as exc:
        return tally.add("console", "LOST: connection error", 0, repr(exc))
    good = r.status_code == 200 and {m["name"] for m in r.json()} >= set(MODELS)
    outcome = "ok" if good else f"LOST: status {r.status_code}"
    tally.add("console", outcome, time.monotonic() - started, r.text)


KINDS = ["plain"] * 4 + ["slow"] * 2 + ["stream"] * 3 + ["meta", "console"]


async def client_loop(server: Soaked, tally: Tally, stop: asyncio.Event, deadline: float) -> None:
    """Requests one after another until `stop`; each must be over within `deadline` seconds
    in all (httpx's timeouts alone bound each read, not a whole trickling answer)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(deadline)) as client:
        while not stop.is_set():
            kind = random.choice(KINDS)
            try:
                async with asyncio.timeout(deadline):
                    if kind == "stream":
                        await _stream(client, server, tally)
                    elif kind == "console":
                        await _console(client, server, tally)
                    else:
                        await _unary(client, server, tally, kind)
            except TimeoutError:
                tally.add(kind, "LOST: no answer within the deadline", deadline)


# --- faults -----------------------------------------------------------------------------


async def inject_faults(server: Soaked, tally: Tally, stop: asyncio.Event, every: float) -> None:
    """Every `every` seconds: kill -9 one worker, then next time a redeploy (in the
    background; the next redeploy waits until the previous one has answered)."""
    redeploying: asyncio.Task[None] | None = None
    n = 0
    async with httpx.AsyncClient(timeout=300) as client:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                break
            model = random.choice(list(MODELS))
            if n % 2 == 0:
                _kill_one(server, tally, model)
            elif redeploying is None or redeploying.done():
                redeploying = asyncio.create_task(_redeploy(client, server, tally, model))
            n += 1
        if redeploying is not None:
            await redeploying


def _kill_one(server: Soaked, tally: Tally, model: str) -> None:
    pids = soak_procs.worker_pids(server.home, model)
    if not pids:
        return  # restarting right now: the next fault picks again
    tally.kills.append((model, time.monotonic()))
    with contextlib.suppress(ProcessLookupError):
        os.kill(random.choice(pids), signal.SIGKILL)


async def _redeploy(client: httpx.AsyncClient, server: Soaked, tally: Tally, model: str) -> None:
    outcome = await deploy(client, server, model)
    tally.redeploys[outcome] += 1


async def traffic(
    server: Soaked, seconds: float, clients: int, every: float | None, deadline: float
) -> Tally:
    tally, stop = Tally(), asyncio.Event()
    tasks = [
        asyncio.create_task(client_loop(server, tally, stop, deadline)) for _ in range(clients)
    ]
    if every is not None:
        tasks.append(asyncio.create_task(inject_faults(server, tally, stop, every)))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return tally


# --- settling and verdict -----------------------------------------------------------------


def settle(server: Soaked, baseline_fds: int | None, tolerance: int) -> soak_procs.ProcCounts:
    """Wait (bounded) until every model serves, one worker each, no fetch or zombie, and
    the fds back within the tolerance; then count. A deadline passing is not an error here:
    the verdict reads the counts."""
    pid = server.proc.pid

    def ready() -> bool:
        return httpx.get(server.url + "/readyz", timeout=5).status_code == 200

    def quiet() -> bool:
        c = soak_procs.count(pid, server.home)
        fds_ok = baseline_fds is None or c.fds <= baseline_fds + tolerance
        return c.workers == len(MODELS) and not c.fetches and not c.zombies and fds_ok

    for check, what in ((ready, "every model ready"), (quiet, "processes and fds settled")):
        try:
            _poll(check, what, 60)
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
    return soak_procs.count(pid, server.home)


def stop_server(server: Soaked, grace_s: float = 60) -> tuple[int | None, int]:
    """SIGTERM to the server alone; (its exit status or None, workers left 10 s later)."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        status: int | None = server.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        status = None
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    with contextlib.suppress(RuntimeError):
        _poll(lambda: not soak_procs.children_of(server.home), "no worker left", 10)
    left = soak_procs.children_of(server.home)
    for pid in left:  # leave the machine clean even on failure
        os.kill(pid, signal.SIGKILL)
    return status, len(left)


def verdict(
    tally: Tally,
    before: soak_procs.ProcCounts,
    after: soak_procs.ProcCounts,
    exit_status: int | None,
    workers_left: int,
    tolerance: int,
) -> list[tuple[str, bool, str]]:
    ok_total = sum(n for (_, outcome), n in tally.counts.items() if outcome == "ok")
    failed_redeploys = sum(n for k, n in tally.redeploys.items() if k != "ok")
    return [
        ("no lost or hung request", tally.lost == 0, f"{tally.lost} lost of {tally.total}"),
        ("requests answered", ok_total > 0, f"{ok_total} ok"),
        (
            "faults injected",
            bool(tally.kills) and tally.redeploys["ok"] > 0,
            f"{len(tally.kills)} kills, {tally.redeploys['ok']} redeploys",
        ),
        ("every redeploy answered 200", failed_redeploys == 0, f"{failed_redeploys} failed"),
        (
            "no leaked process",
            after.workers == len(MODELS) and not after.fetches and not after.zombies,
            f"workers {after.workers} (want {len(MODELS)}), fetch {after.fetches}, "
            f"zombies {after.zombies}",
        ),
        (
            "no leaked fd",
            after.fds <= before.fds + tolerance,
            f"{before.fds} -> {after.fds} (tolerance {tolerance})",
        ),
        ("SIGTERM exits 0", exit_status == 0, f"exit status {exit_status}"),
        ("no worker outlives the server", workers_left == 0, f"{workers_left} left"),
    ]


# --- report -------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


def report(
    tally: Tally,
    checks: list[tuple[str, bool, str]],
    counts: dict[str, dict[str, float]],
    seconds: float,
    fd_change: dict[str, int],
) -> dict[str, object]:
    kinds = sorted({k for k, _ in tally.counts})
    outcomes = sorted({o for _, o in tally.counts}, key=lambda o: (o.startswith("LOST"), o))
    lines = [f"\nsoak: {seconds:.0f} s of traffic with faults", ""]
    width = max(len(o) for o in outcomes) if outcomes else 10
    lines.append(f"{'outcome':<{width}} " + " ".join(f"{k:>8}" for k in kinds))
    for outcome in outcomes:
        row = " ".join(f"{tally.counts[(k, outcome)]:>8}" for k in kinds)
        lines.append(f"{outcome:<{width}} {row}")
    lines.append("")
    lines.append(
        "latency of ok answers (ms): "
        + ", ".join(
            f"{k} p50 {_pct(v, 0.5)} p99 {_pct(v, 0.99)} max {_pct(v, 1.0)}"
            for k, v in sorted(tally.latencies.items())
            if v
        )
    )
    lines.append(f"faults: {len(tally.kills)} kill -9, redeploys {dict(tally.redeploys)}")
    lines.append("server:  " + "  ".join(f"{when}: {c}" for when, c in counts.items()))
    lines.append(f"gateway fds that changed (after soak - after warm-up): {fd_change}")
    lines.append("")
    for name, passed, detail in checks:
        lines.append(f"  {'PASS' if passed else 'FAIL'}  {name:<32} {detail}")
    if tally.examples:
        lines += ["", "lost requests (first 20):", *(f"  {e}" for e in tally.examples)]
    passed = all(p for _, p, _ in checks)
    lines += ["", "soak: PASS" if passed else "soak: FAIL"]
    print("\n".join(lines), flush=True)
    return {
        "seconds": seconds,
        "passed": passed,
        "outcomes": {f"{k}/{o}": n for (k, o), n in sorted(tally.counts.items())},
        "kills": len(tally.kills),
        "redeploys": dict(tally.redeploys),
        "server": counts,
        "fd_change": fd_change,
        "checks": [{"check": n, "passed": p, "detail": d} for n, p, d in checks],
        "lost_examples": tally.examples,
    }


def _fd_change(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted({*before, *after})}


# --- main ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="modelhost-soak-") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "models"
        home.mkdir()
        work.mkdir()
        server = start_server(home)
        try:
            asyncio.run(setup_models(server, work))
            print(f"soak: warm-up {args.warmup:.0f} s without faults ...", flush=True)
            warm = asyncio.run(traffic(server, args.warmup, args.clients, None, args.deadline))
            before = settle(server, None, args.fd_tolerance)
            fds_before = soak_procs.fd_kinds(server.proc.pid)
            print(
                f"soak: {args.duration:.0f} s with {args.clients} clients, a fault every "
                f"{args.every} s ...",
                flush=True,
            )
            tally = asyncio.run(
                traffic(server, args.duration, args.clients, args.every, args.deadline)
            )
            after = settle(server, before.fds, args.fd_tolerance)
            fds_after = soak_procs.fd_kinds(server.proc.pid)
        finally:
            exit_status, left = stop_server(server)
        if warm.lost:
            tally.examples[:0] = [f"(warm-up) {e}" for e in warm.examples]
        for (kind, outcome), n in warm.counts.items():
            if outcome.startswith("LOST"):
                tally.counts[(kind, f"{outcome} (warm-up)")] += n
        checks = verdict(tally, before, after, exit_status, left, args.fd_tolerance)
        counts = {"after warm-up": before.row(), "after soak": after.row()}
        fd_change = {k: n for k, n in _fd_change(fds_before, fds_after).items() if n}
        result = report(tally, checks, counts, args.duration, fd_change)
        if not result["passed"]:
            print(f"\nserver log (tail):\n{(home / 'serve.log').read_text()[-4000:]}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    return bool(result["passed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=300, help="seconds with faults")
    parser.add_argument("--warmup", type=float, default=10, help="seconds without faults")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--every", type=float, default=4, help="seconds between faults")
    parser.add_argument("--deadline", type=float, default=30, help="seconds per request")
    parser.add_argument("--fd-tolerance", type=int, default=12)
    parser.add_argument("--results", type=Path, default=RESULTS / "soak.json", help="JSON out")
    return 0 if run(parser.parse_args(argv)) else 1


if __name__ == "__main__":
    sys.exit(main())
