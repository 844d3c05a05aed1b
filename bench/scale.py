"""Scale-out: throughput against the replica count, and Ray's runtime against local processes.

    python -m bench.scale [--replicas 1,2,4] [--duration 10] [--rounds 3]
                          [--runtime ray|local] [--ray-address HOST:PORT] [--num-cpus 0.25]

By default it starts and stops everything it needs (bench/cluster.py): a two-node Ray
cluster on the loopback address 127.0.0.2 (nodes `node_a` and `node_b`), a PostgreSQL
schema per server for the registry (the machine's PostgreSQL: MODELHOST_TEST_PG_URL, else
postgres@127.0.0.1/test) and a moto S3 server for the store. `--ray-address` uses a
running cluster instead; `--runtime local` measures the replica scaling with local
processes and skips Ray.

1. A model whose sync `predict` holds one slot for 50 ms (a lock: one request at a time per
   replica, ~20 requests/s each) is deployed once per N in `--replicas`, each on its own
   deployment with N replicas (on Ray: `placement: spread`, so they share the two nodes),
   in one server of `--runtime`. Each is driven by a closed loop of `4 x N` clients (enough
   to keep every slot busy) in `--rounds` alternating rounds (this is a shared machine whose
   speed drifts: alternating makes a slow spell hit all alike); its median round counts.
   Goal: N replicas give >= 0.8 x N x one replica's throughput.
2. On Ray: the echo model through a `MODELHOST_RUNTIME=ray` server against a local-process
   one, alternating (wrk -t1 -c64 when installed, else this script's own client, which may
   be slower than both servers: then the ratio says little). Goal: Ray's >= 0.8 x local's.

Ends by printing one JSON line:
`{"replicas": {"1": req_s, "2": req_s, "4": req_s}, "ray_vs_local_echo": ratio | null}`,
and writes the same with details to bench/results/scale.json and a plot to
bench/results/scale.png. Exit code 1 when a goal is missed or a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import cluster_env, pg_schema
from bench.procs import server_process
from bench.wrk import run_wrk

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SLOT_MODEL = '''"""One slot held 50 ms per request: a replica answers one request at a time."""
import threading
import time

_slot = threading.Lock()


def predict(payload_dict: dict, **kwargs):
    with _slot:
        time.sleep(0.05)
    return {"ok": True}
'''
ECHO_MODEL = "async def predict(payload_dict: dict, **kwargs):\n    return payload_dict\n"
CLIENTS_PER_REPLICA = 4
GOAL = 0.8
PASSWORD = "bench-password"


@dataclass
class Model:
    label: str
    url: str
    token: str
    clients: int


@dataclass
class Run:
    rps: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.rps) if self.rps else 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `modelhost serve` child process with an admin token, deploying models into it."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home
        access = httpx.post(
            url + "/console/api/auth/",
            json={"email": "admin@modelhost.local", "password": PASSWORD},
        ).json()["access"]
        self.admin = {"authorization": f"Bearer {access}"}

    def deploy(
        self,
        name: str,
        source: str,
        replicas: int,
        num_cpus: float | None = None,
        spread: bool = False,
    ) -> tuple[str, str]:
        """Deploy `source` as bench/<name> on a deployment of its own (`num_cpus` per
        replica on Ray); (URL, session token)."""
        from modelhost.client._packing import pack_model_dir

        mh = self.url + "/console/api/modelhost"
        deployment: dict[str, Any] = {"key": f"{name}-depl", "replicas": replicas}
        if num_cpus is not None:
            deployment["num_cpus"] = num_cpus
        if spread:
            deployment["placement"] = "spread"
        r = httpx.post(mh + "/deployments/", json=deployment, headers=self.admin)
        r.raise_for_status()
        folder = self.home / "models" / name
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(source)
        deployed = httpx.post(
            mh + "/deploy/",
            params={"deployment": f"{name}-depl", "prefix": "bench", "name": name},
            content=pack_model_dir(folder),
            headers={**self.admin, "content-type": "application/gzip"},
            timeout=600,
        ).json()
        if deployed.get("state") != "ready":
            raise RuntimeError(f"deploying {name} failed: {deployed}")
        url = deployed["api_url"]
        self._wait_replicas(url, replicas)
        token = httpx.request(
            "GET", mh + "/model-auth/", json={"model_url": url}, headers=self.admin
        ).json()["token"]
        return url, token

    def _wait_replicas(self, url: str, replicas: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            meta = httpx.get(url + "?get_meta=true", headers=self.admin, timeout=30).json()
            states = [r["state"] for r in meta.get("replica_states", [])]
            if states == ["ready"] * replicas:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{url}: {replicas} replicas were not ready within {timeout_s} s")


@contextmanager
def modelhost(runtime: str, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "MODELHOST_HOME": home,
            "MODELHOST_PORT": str(port),
            "MODELHOST_ADMIN_PASSWORD": PASSWORD,
            "MODELHOST_LOG_LEVEL": "warning",
            "MODELHOST_RUNTIME": runtime,
            **(extra_env or {}),
        }
        log = Path(home) / "serve.log"
        with server_process([sys.executable, "-m", "modelhost.cli", "serve"], env=env, log=log):
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, log)
            yield Server(url, Path(home))


@contextmanager
def ray_gateway(cluster: dict[str, str]) -> Iterator[Server]:
    """A `MODELHOST_RUNTIME=ray` server on `cluster` with a registry schema of its own."""
    with pg_schema() as database:
        schema_store = f"s3://bench/{secrets.token_hex(4)}"
        env = {**cluster, "MODELHOST_DATABASE_URL": database, "MODELHOST_STORE_URL": schema_store}
        with modelhost("ray", env) as server:
            yield server


def _wait_healthy(url: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text(errors='replace')[-3000:]}")


async def _closed_loop(model: Model, duration_s: float) -> tuple[float, int]:
    """`model.clients` clients each sending one request after the other for `duration_s`:
    (answered requests/s, failed requests)."""
    headers = {"authorization": f"Bearer {model.token}"}
    done = failed = 0
    limits = httpx.Limits(max_connections=model.clients, max_keepalive_connections=model.clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        deadline = time.monotonic() + duration_s

        async def one_client() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                try:
                    r = await client.post(model.url, json={"x": 1}, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done, failed = (done + 1, failed) if ok else (done, failed + 1)

        started = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(model.clients)))
        return done / (time.monotonic() - started), failed


def measure(model: Model, duration_s: float, echo: bool = False) -> tuple[float, int]:
    if echo and shutil.which("wrk"):
        result = run_wrk(model.label, model.url, model.token, duration_s=int(duration_s))
        return result.rps, result.errors
    return asyncio.run(_closed_loop(model, duration_s))


def alternate(models: list[Model], duration_s: float, rounds: int, echo: bool) -> dict[str, Run]:
    """A short warm-up each, then `rounds` measured runs each, in alternating order."""
    for model in models:
        measure(model, min(2.0, duration_s), echo)
    runs = {m.label: Run() for m in models}
    for n in range(rounds):
        for model in models if n % 2 == 0 else models[::-1]:
            rps, errors = measure(model, duration_s, echo)
            runs[model.label].rps.append(rps)
            runs[model.label].errors += errors
            print(f"  {model.label}: {rps:,.1f} requests/s", file=sys.stderr, flush=True)
    return runs


def replica_scaling(args: argparse.Namespace, cluster: dict[str, str] | None) -> dict[str, Run]:
    with ray_gateway(cluster) if cluster is not None else modelhost("local") as server:
        models = []
        for n in args.replicas:
            print(f"deploying the 50 ms slot model with {n} replica(s) ...", file=sys.stderr)
            url, token = server.deploy(
                f"slot{n}", SLOT_MODEL, n, args.num_cpus, spread=cluster is not None
            )
            models.append(Model(str(n), url, token, CLIENTS_PER_REPLICA * n))
        return alternate(models, args.duration, args.rounds, echo=False)


def ray_vs_local(args: argparse.Namespace, cluster: dict[str, str] | None) -> dict[str, Run] | None:
    if cluster is None:
        print("--runtime local: the Ray/local echo ratio is not measured", file=sys.stderr)
        return None
    with modelhost("local") as local, ray_gateway(cluster) as ray:
        models = []
        for name, server in (("local", local), ("ray", ray)):
            url, token = server.deploy("echo", ECHO_MODEL, 1, args.num_cpus)
            models.append(Model(name, url, token, 64))
        return alternate(models, args.duration, args.rounds, echo=True)


@contextmanager
def the_cluster(args: argparse.Namespace) -> Iterator[dict[str, str] | None]:
    """Ray nodes (started here unless --ray-address) and the S3 server; None for local."""
    if args.runtime == "local":
        yield None
        return
    with cluster_env(args.ray_address, _free_port()) as env:
        yield env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", default="1,2,4", help="replica counts, comma-separated")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measured rounds")
    parser.add_argument(
        "--runtime",
        choices=("ray", "local"),
        default="ray",
        help="ray (default): replicas as Ray actors on two nodes, and Ray's echo against "
        "local; local: the replica scaling with local processes only",
    )
    parser.add_argument(
        "--ray-address",
        default="",
        help="a running Ray cluster (HOST:PORT) instead of two nodes started here",
    )
    parser.add_argument(
        "--num-cpus",
        type=float,
        default=0.25,
        help="the deployments' num_cpus per replica on Ray (the slot model sleeps: 0.25 lets "
        "1 + 2 + 4 replicas fit the two 2-CPU nodes; Ray's default is 1)",
    )
    args = parser.parse_args()
    args.replicas = [int(n) for n in args.replicas.split(",") if n.strip()]
    with the_cluster(args) as cluster:
        scaling = replica_scaling(args, cluster)
        echo = ray_vs_local(args, cluster)
    print(json.dumps(report(args, scaling, echo)))
    if not report_ok(args, scaling, echo):
        sys.exit(1)


def report(
    args: argparse.Namespace, scaling: dict[str, Run], echo: dict[str, Run] | None
) -> dict[str, Any]:
    ratio = echo["ray"].median / echo["local"].median if echo and echo["local"].median else None
    line = {
        "replicas": {k: round(run.median, 1) for k, run in scaling.items()},
        "ray_vs_local_echo": round(ratio, 3) if ratio is not None else None,
    }
    RESULTS.mkdir(exist_ok=True)
    details = {
        **line,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "runtime": args.runtime,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "load": f"closed loop, {CLIENTS_PER_REPLICA} clients per replica, 50 ms sync slot",
        "replica_rounds": {k: [round(x, 1) for x in run.rps] for k, run in scaling.items()},
        "errors": {k: run.errors for k, run in {**scaling, **(echo or {})}.items()},
        "echo_rounds": {k: [round(x) for x in run.rps] for k, run in (echo or {}).items()},
        "echo_load": "wrk -t1 -c64" if shutil.which("wrk") else "this script's client, 64 clients",
    }
    (RESULTS / "scale.json").write_text(json.dumps(details, indent=2) + "\n")
    plot(details, RESULTS / "scale.png")
    return line


def plot(details: dict[str, Any], png: Path) -> None:
    """Requests/s against replicas (min-max bars over the rounds) with the goal line, and
    the echo rounds of both runtimes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    counts = sorted(details["replica_rounds"], key=int)
    medians = [details["replicas"][k] for k in counts]
    lows = [m - min(details["replica_rounds"][k]) for k, m in zip(counts, medians, strict=True)]
    highs = [max(details["replica_rounds"][k]) - m for k, m in zip(counts, medians, strict=True)]
    xs = [int(k) for k in counts]
    left.errorbar(xs, medians, yerr=[lows, highs], marker="o", capsize=4, label="modelhost")
    if "1" in details["replicas"]:
        one = details["replicas"]["1"]
        left.plot(xs, [GOAL * n * one for n in xs], "--", label=f"goal: {GOAL} x N x one")
    left.set(
        xlabel="replicas", ylabel="requests/s", title=f"50 ms slot model ({details['runtime']})"
    )
    left.set_xticks(xs)
    left.legend()
    echo = details.get("echo_rounds") or {}
    if echo:
        names = list(echo)
        right.boxplot([echo[n] for n in names])
        right.set_xticks(range(1, len(names) + 1), names)
        right.set(ylabel="requests/s", title=f"echo, 1 replica ({details['echo_load']})")
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def report_ok(
    args: argparse.Namespace, scaling: dict[str, Run], echo: dict[str, Run] | None
) -> bool:
    """Every goal met and no request failed (the reasons go to stderr)."""
    problems = [f"{k}: {run.errors} failed requests" for k, run in scaling.items() if run.errors]
    one = scaling.get("1")
    for key, run in scaling.items():
        if one is not None and run.median < GOAL * int(key) * one.median:
            problems.append(
                f"{key} replicas: {run.median:.1f} requests/s < {GOAL} x {key} x {one.median:.1f}"
            )
    if echo is not None and echo["ray"].median < GOAL * echo["local"].median:
        problems.append(
            f"Ray echo {echo['ray'].median:.0f} requests/s < {GOAL} x local "
            f"{echo['local'].median:.0f}"
        )
    for problem in problems:
        print(f"goal missed: {problem}", file=sys.stderr)
    return not problems


if __name__ == "__main__":
    main()
