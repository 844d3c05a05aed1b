"""MODELHOST_RUNTIME=ray against a real two-node Ray cluster on this machine (issue 11).

A real `modelhost serve` on a PostgreSQL registry and an S3 store (moto) places each replica
as a Ray actor (`mh-v<version>-r<n>`); the actor fetches the files from the store and runs
the worker, which the gateway reaches over authenticated TCP. Requests never pass through
Ray. Killing an actor (kill -9) fails only the requests in flight on it, at once, with 503;
Ray restarts it and the gateway reconnects.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from e2e.harness import Server, bearer, free_port, model_dir, poll

pytest.importorskip("ray", reason="the Ray runtime's tests need ray: pip install 'modelhost[ray]'")

from scale.ray_cluster import RayCluster, new_cluster

MH = "/console/api/modelhost"
S3_CREDS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SLOW = """
import asyncio
import os

from prometheus_client import Counter

CALLS = Counter("slow_calls", "Predictions answered.")


async def predict(payload_dict: dict, **kwargs):
    await asyncio.sleep(float(payload_dict.get("sleep", 0)))
    CALLS.inc()
    return {"pid": os.getpid()}
"""


# Node b keeps its replicas' files in a home of its own (MODELHOST_NODE_HOME), node a in the
# gateway's paths (the default).
NODE_HOME = "mh-node-b-home"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    ray_cluster = new_cluster()
    node_home = ray_cluster.temp_dir / NODE_HOME
    ray_cluster.node_b_env["MODELHOST_NODE_HOME"] = str(node_home)
    ray_cluster.start()
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture(scope="module")
def gateway(
    cluster: RayCluster,
    pg_admin: tuple[Engine, str],
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    import boto3

    engine, base_url = pg_admin
    schema = f"mh_ray_{os.getpid()}"
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    bucket = f"mh-ray-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_creds()).create_bucket(Bucket=bucket)
    server = Server(
        tmp_path_factory.mktemp("ray-gateway"),
        free_port(),
        extra_env={
            **S3_CREDS,
            "MODELHOST_DATABASE_URL": url.render_as_string(hide_password=False),
            "MODELHOST_STORE_URL": f"s3://{bucket}/modelhost",
            "MODELHOST_S3_ENDPOINT_URL": s3_endpoint,
            "MODELHOST_RUNTIME": "ray",
            "MODELHOST_RAY_ADDRESS": cluster.address,
            "MODELHOST_RAY_NAMESPACE": f"mh-test-{secrets.token_hex(4)}",
            "MODELHOST_WORKER_HOST": "127.0.0.1",
            "MODELHOST_DRAIN_TIMEOUT_S": "5",
            "MODELHOST_WORKER_RECONNECT_S": "5",
        },
    ).start(timeout=120)
    try:
        yield server
    finally:
        server.stop()
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _boto_creds() -> dict[str, str]:
    return {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "region_name": "us-east-1",
    }


@pytest.fixture(scope="module")
def spread(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model on a deployment of 2 replicas spread over the nodes (2 CPUs each)."""
    return _spread_model(gateway, tmp_path_factory, "spread", "slow", num_cpus=0.5)


def _spread_model(
    gateway: Server, tmp: pytest.TempPathFactory, deployment: str, name: str, num_cpus: float
) -> dict[str, Any]:
    admin = bearer(gateway.admin_token())
    body = {"key": deployment, "replicas": 2, "placement": "spread", "num_cpus": num_cpus}
    r = httpx.post(gateway.url + MH + "/deployments/", json=body, headers=admin, timeout=60)
    assert r.status_code == 201, r.text
    folder = model_dir(tmp.mktemp(name), name, SLOW)
    result = gateway.deploy(folder, "ray", name, deployment)
    assert result["status"] == 200, (result, gateway.log()[-3000:])
    url = str(result["api_url"])
    headers = bearer(gateway.session_token(url))
    poll(lambda: _ready_replicas(url, headers) == 2, "both replicas ready", deadline_s=180)
    return {"url": url, "headers": headers}


def _meta(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(url + "?get_meta=true", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ready_replicas(url: str, headers: dict[str, str]) -> int:
    states = _meta(url, headers)["replica_states"]
    return sum(1 for s in states if s["state"] == "ready")


def _actor_nodes(cluster: RayCluster, namespace_env: str) -> dict[str, str]:
    import ray

    ray.init(address=cluster.address, namespace=namespace_env, log_to_driver=False)
    try:
        return {
            name: ray.get(ray.get_actor(name).node.remote(), timeout=60)
            for name in ("mh-v1-r0", "mh-v1-r1")
        }
    finally:
        ray.shutdown()


def test_two_replicas_serve_from_both_nodes(
    cluster: RayCluster, gateway: Server, spread: dict[str, Any]
) -> None:
    pods: Counter[str] = Counter()
    for _ in range(20):
        r = httpx.post(spread["url"], json={}, headers=spread["headers"], timeout=30)
        assert r.status_code == 200, r.text
        pods[r.headers["x-prt-pod-name"]] += 1
    assert sorted(pods) == ["spread-mh-v1-r0", "spread-mh-v1-r1"], pods
    nodes = _actor_nodes(cluster, gateway.extra_env["MODELHOST_RAY_NAMESPACE"])
    assert len(set(nodes.values())) == 2, f"both replicas on one node: {nodes}"
    # Each worker keeps its files where its node says: node b in MODELHOST_NODE_HOME (its
    # folder, its model files, its spec), node a in the gateway's paths.
    folders = sorted(os.readlink(f"/proc/{pid}/cwd") for pid in _worker_pids(gateway.home))
    node_home = cluster.temp_dir / NODE_HOME
    assert [f.startswith(str(node_home)) for f in folders].count(True) == 1, folders
    assert [f.startswith(str(gateway.home)) for f in folders].count(True) == 1, folders
    assert list((node_home / "versions" / "ray" / "slow" / "v1").glob("model.py")), folders
    assert list((node_home / "run").glob("*.json")), folders


def test_each_replicas_own_metrics_reach_the_gateways_metrics(
    gateway: Server, spread: dict[str, Any]
) -> None:
    """The model's Counter, counted by each worker on its node (node b's files in its node
    home, where the gateway never looks), shows in the gateway's /metrics once per replica:
    the gateway asks each replica's actor for its worker's metrics."""

    def calls() -> dict[str, float]:
        r = httpx.get(gateway.url + "/metrics", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        return {
            s.labels["replica"]: s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
            if s.name == "slow_calls_total" and s.labels.get("model") == "slow"
        }

    admin = bearer(gateway.admin_token())
    before = calls()
    pods: Counter[str] = Counter()
    for _ in range(20):
        r = httpx.post(spread["url"], json={}, headers=spread["headers"], timeout=30)
        assert r.status_code == 200, r.text
        pods[r.headers["x-prt-pod-name"].rsplit("-r", 1)[1]] += 1
    after = calls()
    assert sorted(after) == ["0", "1"], after
    assert {k: after[k] - before.get(k, 0) for k in after} == dict(pods), (before, after)


def test_worker_tcp_socket_refuses_a_client_without_the_secret(
    gateway: Server, spread: dict[str, Any]
) -> None:
    ports = _worker_ports(gateway.home)
    assert ports, "no worker process listening found"
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            hello = sock.recv(36)
            assert hello.startswith(b"MHW1")
            sock.sendall(b"\0" * 64)  # no key: a proof that cannot match
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(4096) == b"", "the worker answered a client without the secret"


def test_a_restarted_gateway_attaches_to_the_running_replicas(
    gateway: Server, spread: dict[str, Any]
) -> None:
    """The actors are the deployment's, not the gateway's: a gateway that stops leaves them
    serving, and when it (or another gateway on the registry) starts it attaches to the same
    worker processes instead of starting new ones."""
    before = _worker_pids(gateway.home)
    assert len(before) == 2, before
    gateway.stop()
    assert _worker_pids(gateway.home) == before, "stopping the gateway stopped its replicas"
    gateway.start(timeout=120)
    url, headers = spread["url"], spread["headers"]
    poll(lambda: _ready_replicas(url, headers) == 2, "both replicas attached", deadline_s=120)
    r = httpx.post(url, json={}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["pid"] in before
    assert _worker_pids(gateway.home) == before, "the replicas were started again"


def _ours(cmdline: bytes, home: Path) -> bool:
    """A modelhost worker of this gateway: its spec under the gateway's home or node b's."""
    return b"modelhost.worker\0" in cmdline and (
        str(home).encode() in cmdline or f"/{NODE_HOME}/".encode() in cmdline
    )


def _worker_pids(home: Path) -> set[int]:
    return {pid for pid in _all_pids() if _ours(_cmdline(pid), home)}


def _worker_ports(home: Path) -> list[int]:
    """TCP ports our modelhost workers listen on (found from /proc, by their spec paths)."""
    pids = [pid for pid in _all_pids() if _ours(_cmdline(pid), home)]
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # LISTEN
            ports.append(int(local.split(":")[1], 16))
    return ports


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Clients:
    """Clients calling `url` in a loop until stopped; every answer is recorded."""

    def __init__(self, url: str, headers: dict[str, str], n: int, sleep: float) -> None:
        self.url, self.headers, self.sleep = url, headers, sleep
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int, str, str]] = []  # start, end, status, pod
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    r = client.post(self.url, json={"sleep": self.sleep}, headers=self.headers)
                    status, pod, retry = (
                        r.status_code,
                        r.headers.get("x-prt-pod-name", ""),
                        (r.headers.get("retry-after", "")),
                    )
                except httpx.HTTPError as exc:
                    status, pod, retry = 0, type(exc).__name__, ""
                with self._lock:
                    self.results.append((start, time.monotonic(), status, pod, retry))


def test_a_dropped_connection_is_made_again_and_the_same_workers_serve(
    gateway: Server, spread: dict[str, Any]
) -> None:
    """The kernel aborts the gateway's TCP connections to both workers (`ss -K`: what a
    network blip or a proxy's idle timeout does) while their actors and workers run on: the
    gateway connects again and the same worker processes serve, none restarted."""
    if not _can_kill_sockets():
        pytest.skip("ss -K cannot abort sockets here (needs root and INET_DIAG_DESTROY)")
    url, headers = spread["url"], spread["headers"]
    names = ("mh-v1-r0", "mh-v1-r1")
    workers = {_worker_pid(gateway.home, name) for name in names}
    made_again = gateway.log().count("connection lost and made again")
    for pid in workers:
        _abort_connections_to(_listening_port(pid))
    poll(
        lambda: gateway.log().count("connection lost and made again") >= made_again + 2,
        "both connections made again",
        deadline_s=60,
    )
    poll(lambda: _ready_replicas(url, headers) == 2, "both replicas ready", deadline_s=60)
    served = set()
    for _ in range(20):
        r = httpx.post(url, json={"sleep": 0}, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        served.add(r.json()["pid"])
    assert served == workers, "answered by other processes: a replica was restarted"
    assert {_worker_pid(gateway.home, name) for name in names} == workers


def test_a_worker_that_cannot_be_reached_again_is_restarted(
    gateway: Server, spread: dict[str, Any]
) -> None:
    """Its connection aborted while its worker is stopped (SIGSTOP: it accepts nothing and
    never answers the handshake, like a node cut off): after MODELHOST_WORKER_RECONNECT_S
    (5 s here) of trying, the gateway stops the replica's actor and restarts the replica,
    which serves again from a new worker; the other replica is left alone."""
    if not _can_kill_sockets():
        pytest.skip("ss -K cannot abort sockets here (needs root and INET_DIAG_DESTROY)")
    url, headers = spread["url"], spread["headers"]
    kept = _worker_pid(gateway.home, "mh-v1-r0")
    stuck = _worker_pid(gateway.home, "mh-v1-r1")
    gave_up = gateway.log().count("could not be made again")
    os.kill(stuck, signal.SIGSTOP)
    try:
        _abort_connections_to(_listening_port(stuck))
        poll(
            lambda: gateway.log().count("could not be made again") > gave_up,
            "the gateway gave up connecting again",
            deadline_s=60,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    poll(lambda: _ready_replicas(url, headers) == 2, "the replica restarted", deadline_s=180)
    assert _worker_pid(gateway.home, "mh-v1-r1") != stuck
    assert _worker_pid(gateway.home, "mh-v1-r0") == kept
    served = {
        httpx.post(url, json={"sleep": 0}, headers=headers, timeout=30).json()["pid"]
        for _ in range(20)
    }
    assert stuck not in served and kept in served


def _can_kill_sockets() -> bool:
    """Whether `ss -K` aborts a connection here (tried on a throwaway one)."""
    if shutil.which("ss") is None:
        return False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                _abort_connections_to(port)
                accepted.settimeout(5)
                try:
                    accepted.recv(1)  # b"" (closed) or a reset: the peer is gone
                except TimeoutError:  # still connected: nothing was aborted
                    return False
                except OSError:
                    pass
                return True


def _abort_connections_to(port: int) -> None:
    subprocess.run(
        ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"], capture_output=True, timeout=30
    )


def _listening_port(pid: int) -> int:
    """The TCP port process `pid` listens on (a Ray replica's worker: one)."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise AssertionError(f"process {pid} listens on no TCP port:\n{out}")


def test_killing_an_actor_fails_only_its_requests_and_it_comes_back(
    gateway: Server, spread: dict[str, Any]
) -> None:
    url, headers = spread["url"], spread["headers"]
    victim = _actor_pid(gateway.home, "mh-v1-r1")
    with Clients(url, headers, n=4, sleep=2.0) as clients:
        poll(lambda: len(clients.results) >= 4, "requests flowing", deadline_s=60)
        time.sleep(0.5)  # requests are in flight on both replicas now
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        poll(
            lambda: any(s == 503 and e > killed_at for _, e, s, _p, _r in clients.results),
            "the in-flight requests of the killed replica failed",
            deadline_s=30,
        )
        poll(lambda: _ready_replicas(url, headers) == 2, "the replica back", deadline_s=180)
        back_at = time.monotonic()
        poll(
            lambda: any(
                p.endswith("-r1") and st > back_at for st, _e, _s, p, _r in clients.results
            ),
            "requests served by the restarted replica",
            deadline_s=60,
        )
    failed = [r for r in clients.results if r[2] != 200]
    assert failed, "no request was in flight on the killed replica"
    for start, end, status, pod, retry in failed:
        assert status == 503 and retry, (status, pod, retry)
        assert start < killed_at, "a request that started after the kill failed"
        assert end - killed_at < 1.0, f"an in-flight request failed {end - killed_at:.2f} s late"
    ok = [r for r in clients.results if r[2] == 200]
    assert any(r[3].endswith("-r0") and r[0] > killed_at for r in ok), "r0 did not keep serving"
    meta = _meta(url, headers)
    assert [s["state"] for s in meta["replica_states"]] == ["ready", "ready"], meta


def _actor_pid(home: Path, name: str) -> int:
    """The process of actor `name` (ray::ReplicaActor in ps): the parent of its worker."""
    return _ppid(_worker_pid(home, name))


def _worker_pid(home: Path, name: str) -> int:
    """The worker process that runs replica `name`'s spec under this gateway's home."""
    for pid in _all_pids():
        cmdline = _cmdline(pid)
        if _ours(cmdline, home) and f'"pod_name": "spread-{name}"'.encode() in _spec_pod(cmdline):
            return pid
    raise AssertionError(f"no worker process for {name}")


def _spec_pod(cmdline: bytes) -> bytes:
    spec = cmdline.rstrip(b"\0").split(b"\0")[-1]
    try:
        return Path(spec.decode()).read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _node_of(
    cluster: RayCluster, namespace: str, names: tuple[str, ...]
) -> tuple[dict[str, str], str]:
    """Each replica's node id, and the id of node b (the one with the `node_b` resource)."""
    import ray

    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"]]
        node_b = alive[0]["NodeID"] if alive else ""
        replicas = {name: ray.get(ray.get_actor(name).node.remote(), timeout=120) for name in names}
        return replicas, node_b
    finally:
        ray.shutdown()


def test_losing_a_node_fails_only_its_requests_and_the_replica_moves(
    cluster: RayCluster, gateway: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The second node's raylet killed (the node is lost): its replica's requests fail
    together with 503, the other replica keeps serving, and Ray restarts the lost replica on
    the node that is left. Runs last: node b stays dead."""
    # A model of its own: the other one's replicas may all be on node a by now (a restarted
    # actor goes where there is room). Small replicas: node a must have room for the lost one.
    model = _spread_model(gateway, tmp_path_factory, "nodeloss", "lossy", num_cpus=0.1)
    url, headers = model["url"], model["headers"]
    namespace = gateway.extra_env["MODELHOST_RAY_NAMESPACE"]
    names = ("mh-v2-r0", "mh-v2-r1")
    replicas, node_b = _node_of(cluster, namespace, names)
    lost = next(name for name, node in replicas.items() if node == node_b)
    raylet = next(
        pid for pid in cluster.pids("raylet") if f"{cluster.temp_dir}/b".encode() in _cmdline(pid)
    )
    with Clients(url, headers, n=4, sleep=2.0) as clients:
        poll(lambda: len(clients.results) >= 4, "requests flowing", deadline_s=60)
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        poll(
            lambda: any(r[2] == 503 and r[1] > killed_at for r in clients.results),
            "the in-flight requests of the lost node failed",
            deadline_s=30,
        )
        poll(lambda: _ready_replicas(url, headers) == 2, "the replica back", deadline_s=240)
    # The lost node's actor (and with it the worker) goes when it notices its raylet is gone,
    # a moment after the kill; until then the replica looks healthy and gets requests. So
    # the bound is from the moment its connection dropped (the first failure): everything
    # in flight on it fails then, and nothing routed after.
    failed = [r for r in clients.results if r[2] != 200]
    assert failed, "no request was in flight on the lost node's replica"
    dropped_at = min(r[1] for r in failed)
    assert dropped_at - killed_at < 10, f"the loss was noticed {dropped_at - killed_at:.1f} s late"
    for start, end, status, pod, retry in failed:
        assert status == 503 and retry, (status, pod, retry)
        assert start < dropped_at, "a request routed after the lost replica left routing failed"
        assert end - dropped_at < 1.0, f"an in-flight request failed {end - dropped_at:.2f} s late"
    kept = next(name for name in replicas if name != lost)
    assert any(r[2] == 200 and r[3].endswith(kept) and r[0] > killed_at for r in clients.results)
    moved, _ = _node_of(cluster, namespace, names)
    assert moved[lost] != node_b, f"{lost} still on the lost node"


HOG = Path(__file__).parents[1] / "faults" / "models" / "memory_hog.py"
BOUND_MB = 250


def test_a_replica_over_its_memory_bound_is_killed_on_its_node_and_restarted(
    gateway: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The deployment's `memory_mb` holds on a Ray node as for a local worker: the actor
    polls its worker's resident memory, kills it past the bound, and the replica's last exit
    names the bound; Ray restarts the actor and the model serves again from a new worker.
    (After the node-loss test: one node is left, which has room for this small replica.)"""
    admin = bearer(gateway.admin_token())
    body = {"key": "bounded", "replicas": 1, "num_cpus": 0.1, "memory_mb": BOUND_MB}
    r = httpx.post(gateway.url + MH + "/deployments/", json=body, headers=admin, timeout=60)
    assert r.status_code == 201, r.text
    folder = tmp_path_factory.mktemp("hog") / "hog"
    folder.mkdir()
    shutil.copy(HOG, folder / "model.py")
    result = gateway.deploy(folder, "ray", "hog", "bounded")
    assert result["status"] == 200, (result, gateway.log()[-3000:])
    url = str(result["api_url"])
    headers = bearer(gateway.session_token(url))
    poll(lambda: _ready_replicas(url, headers) == 1, "the replica ready", deadline_s=180)

    small = httpx.post(url, json={"mb": 10}, headers=headers, timeout=60)
    assert small.status_code == 200, small.text  # well under the bound: served
    pid = small.json()["pid"]
    big = httpx.post(url, json={"mb": 400, "hold_s": 60}, headers=headers, timeout=90)
    assert big.status_code == 503, big.text  # killed while answering, not after 60 s
    assert big.headers.get("retry-after"), big.headers

    def served_by_a_new_worker() -> bool:
        answer = httpx.post(url, json={"mb": 10}, headers=headers, timeout=60)
        return answer.status_code == 200 and answer.json()["pid"] != pid

    poll(served_by_a_new_worker, "the killed worker replaced", deadline_s=180)
    meta = _meta(url, headers)
    assert f"exceeded its memory bound of {BOUND_MB} MB" in meta["last_exit"], meta
    assert meta["restarts"] >= 1, meta
