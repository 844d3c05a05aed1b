"""Against a real `modelhost serve`: versions and traffic (issue 10, item 11) and
per-deployment limits (item 1). Weighted splits, sticky session keys, pin, rollback,
delete, live replica changes under load, `x-prt-pod-name` per replica, the queue bound (429)
and a deployment's own predict deadline (504).

The server keeps one loaded version per model (MODELHOST_KEEP_VERSIONS=1), so giving traffic
to an older version or pinning it also restarts it. No assertion on wall-clock times: every
wait polls up to a generous deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import ADMIN_EMAIL, ADMIN_PASSWORD, Server, free_port, model_dir
from e2e.harness import bearer as _auth
from e2e.harness import poll as _poll

FAULT_MODELS = Path(__file__).parent / "models"
MH = "/console/api/modelhost"
GLOBAL_DEADLINE_S = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("traffic-home")
    srv = Server(
        home,
        free_port(),
        extra_env={
            "MODELHOST_KEEP_VERSIONS": "1",
            "MODELHOST_PREDICT_TIMEOUT_S": str(GLOBAL_DEADLINE_S),
            "MODELHOST_DRAIN_TIMEOUT_S": "10",
        },
    ).start()
    yield srv
    srv.stop()


class Admin:
    def __init__(self, server: Server) -> None:
        self.url = server.url + MH
        self.headers = _auth(server.admin_token())

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=60)
        assert r.status_code == status, r.text
        return r.json()


@pytest.fixture(scope="module")
def admin(server: Server) -> Admin:
    return Admin(server)


def _deploy_versions(
    server: Server, tmp: Path, name: str, count: int, deployment: str = "test-depl"
) -> tuple[str, dict[str, str], int]:
    """`count` versions of the echo model; the URL, a session's headers, the model id."""
    result: dict[str, Any] = {}
    for n in range(1, count + 1):
        folder = model_dir(tmp / f"{name}-{n}", name, "echo.py")
        result = server.deploy(folder, "traffic", name, deployment)
        assert result["status"] == 200 and result["state"] == "ready", result
        assert result["version"] == n
    url = result["api_url"]
    return url, _auth(server.session_token(url)), int(result["model_id"])


def _versions(client: httpx.Client, url: str, headers: dict[str, str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        r = client.post(url, json={"x": 1}, headers=headers)
        assert r.status_code == 200, r.text
        out.append(r.headers["x-prt-model-version"])
    return out


def _meta(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(url + "?get_meta=true", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


class Load(threading.Thread):
    """Clients calling `url` in a loop until stopped; every answer is kept."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.pods: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, json={"x": 1}, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code != 200:
                    self.errors.append(r.text)
                self.pods[r.headers.get("x-prt-pod-name", "")] += 1
                self.versions[r.headers.get("x-prt-model-version", "")] += 1

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(60)


def _served(load: list[Load], key: str) -> set[str]:
    return {k for one in load for k in getattr(one, key)}


# --- weights and sticky sessions ---------------------------------------------------------


def test_weights_70_30_split_1000_requests(server: Server, admin: Admin, tmp_path: Path) -> None:
    url, headers, model_id = _deploy_versions(server, tmp_path, "split", 2)
    listing = admin.call("GET", f"/models/{model_id}/versions/")
    assert [v["state"] for v in listing["versions"]] == ["stopped", "ready"], listing
    done = admin.call("POST", f"/models/{model_id}/traffic/", {"weights": {"v1": 70, "v2": 30}})
    assert done["traffic"]["weights"] == {"v1": 70, "v2": 30}, done
    # v1 had been unloaded (KEEP_VERSIONS=1): it is started again, then shares the URL
    _poll(lambda: _meta(url, headers)["versions"] == {"v1": "ready", "v2": "ready"}, "v1 back")
    _poll(
        lambda: _meta(url, headers)["traffic"]["serving"] == {"v1": 70, "v2": 30},
        "the split in force",
    )
    with httpx.Client(timeout=30) as client:
        answers = Counter(_versions(client, url, headers, 1000))
    assert set(answers) == {"1", "2"}, answers
    assert 650 <= answers["1"] <= 750, answers

    # sticky: one key, one version; many keys reach both
    with httpx.Client(timeout=30) as client:
        for key in ("alice", "bob", "carol"):
            sticky = {**headers, "x-prt-session-key": key}
            assert len(set(_versions(client, url, sticky, 30))) == 1, key
        keyed = set()
        for n in range(60):
            keyed |= set(_versions(client, url, {**headers, "x-prt-session-key": f"k{n}"}, 1))
    assert keyed == {"1", "2"}

    # no weights: the newest ready version serves everything again
    admin.call("POST", f"/models/{model_id}/traffic/", {"weights": {}})
    with httpx.Client(timeout=30) as client:
        assert set(_versions(client, url, headers, 50)) == {"2"}
    audit = admin.call("GET", "/audit/?limit=20")
    assert any(a["action"] == "model.traffic" for a in audit), audit


def test_weights_are_admin_only(server: Server, admin: Admin, tmp_path: Path) -> None:
    _, _, model_id = _deploy_versions(server, tmp_path, "guarded", 1)
    admin.call("POST", "/users/", {"email": "u@x.io", "password": "password-1"}, status=201)
    r = httpx.post(
        server.url + "/console/api/auth/", json={"email": "u@x.io", "password": "password-1"}
    )
    user = _auth(r.json()["access"])
    for method, path, body in (
        ("POST", f"/models/{model_id}/traffic/", {"weights": {"v1": 1}}),
        ("POST", f"/models/{model_id}/pin/", {"version": "v1"}),
        ("POST", f"/models/{model_id}/rollback/", {}),
        ("DELETE", f"/models/{model_id}/versions/v1/", None),
        ("PATCH", "/deployments/test-depl/", {"replicas": 3}),
        ("GET", f"/models/{model_id}/versions/", None),
    ):
        r = httpx.request(method, admin.url + path, json=body, headers=user)
        assert r.status_code == 403, (method, path, r.text)
    rows = {d["key"]: d for d in admin.call("GET", "/deployments/")}
    assert rows["test-depl"]["replicas"] == 1


# --- pin, rollback, delete ---------------------------------------------------------------


def test_pin_serves_only_that_version_without_a_gap(
    server: Server, admin: Admin, tmp_path: Path
) -> None:
    url, headers, model_id = _deploy_versions(server, tmp_path, "pinned", 2)
    with Load(url, headers) as load:
        admin.call("POST", f"/models/{model_id}/pin/", {"version": "v1"})
        _poll(lambda: load.versions["1"] >= 20, "v1 answering")
        seen_v1 = sum(load.statuses.values())
        _poll(lambda: sum(load.statuses.values()) >= seen_v1 + 50, "more answers")
    assert not load.errors, load.errors[:3]  # v2 served while v1 was started again
    with httpx.Client(timeout=30) as client:
        assert set(_versions(client, url, headers, 30)) == {"1"}
    assert _meta(url, headers)["traffic"]["pinned"] == "v1"
    admin.call("DELETE", f"/models/{model_id}/pin/")
    with httpx.Client(timeout=30) as client:
        assert set(_versions(client, url, headers, 30)) == {"2"}
    # no longer pinned: KEEP_VERSIONS=1 unloads it again
    _poll(lambda: _meta(url, headers)["versions"]["v1"] == "stopped", "v1 unloaded")


def test_rollback_restarts_and_pins_the_previous_version(
    server: Server, admin: Admin, tmp_path: Path
) -> None:
    url, headers, model_id = _deploy_versions(server, tmp_path, "rolled", 3)
    done = admin.call("POST", f"/models/{model_id}/rollback/")
    assert done["pinned"] == "v2", done
    _poll(lambda: _meta(url, headers)["version"] == 2, "v2 serving after the rollback")
    with httpx.Client(timeout=30) as client:
        assert set(_versions(client, url, headers, 30)) == {"2"}
    # again: one further back
    assert admin.call("POST", f"/models/{model_id}/rollback/")["pinned"] == "v1"
    _poll(lambda: _meta(url, headers)["version"] == 1, "v1 serving after the second rollback")
    audit = admin.call("GET", "/audit/?limit=20")
    assert any(a["action"] == "model.rollback" for a in audit), audit


def test_delete_a_version_under_load(server: Server, admin: Admin, tmp_path: Path) -> None:
    url, headers, model_id = _deploy_versions(server, tmp_path, "deleted", 2)
    admin.call("POST", f"/models/{model_id}/traffic/", {"weights": {"v1": 50, "v2": 50}})
    _poll(
        lambda: _meta(url, headers)["traffic"]["serving"] == {"v1": 50, "v2": 50},
        "both versions serving",
    )
    with Load(url, headers) as load:
        _poll(lambda: load.versions["1"] >= 10 and load.versions["2"] >= 10, "both answering")
        admin.call("DELETE", f"/models/{model_id}/versions/v1/")
        before = load.versions["2"]
        _poll(lambda: load.versions["2"] >= before + 100, "v2 answering after the delete")
    assert not load.errors, load.errors[:3]
    r = httpx.post(url + "v1/", json={}, headers=headers)
    assert r.status_code == 404, r.text
    with httpx.Client(timeout=30) as client:
        assert set(_versions(client, url, headers, 30)) == {"2"}
    listing = admin.call("GET", f"/models/{model_id}/versions/")
    assert [(v["version"], v["state"]) for v in listing["versions"]] == [
        (1, "deleted"),
        (2, "ready"),
    ], listing
    admin.call("DELETE", f"/models/{model_id}/versions/v1/", status=404)
    # the only ready version is not deleted: the model would answer nothing
    admin.call("DELETE", f"/models/{model_id}/versions/v2/", status=409)


# --- replicas ----------------------------------------------------------------------------


def test_replicas_1_2_1_under_load(server: Server, admin: Admin, tmp_path: Path) -> None:
    admin.call("POST", "/deployments/", {"key": "scaled", "replicas": 1}, status=201)
    url, headers, _ = _deploy_versions(server, tmp_path, "scaled", 1, deployment="scaled")
    loads = [Load(url, headers) for _ in range(2)]
    for load in loads:
        load.start()
    try:
        _poll(lambda: sum(sum(x.statuses.values()) for x in loads) >= 50, "load running")
        row = admin.call("PATCH", "/deployments/scaled/", {"replicas": 2})
        assert row["replicas"] == 2
        _poll(
            lambda: (
                [r["state"] for r in _meta(url, headers)["replica_states"]] == ["ready", "ready"]
            ),
            "two ready replicas",
        )
        _poll(lambda: len(_served(loads, "pods")) == 2, "answers from both replicas")
        pods = _served(loads, "pods")
        admin.call("PATCH", "/deployments/scaled/", {"replicas": 1})
        _poll(lambda: _meta(url, headers)["replicas"] == 1, "back to one replica")
        counts = [sum(x.statuses.values()) for x in loads]
        _poll(
            lambda: all(
                sum(x.statuses.values()) >= c + 50 for x, c in zip(loads, counts, strict=True)
            ),
            "load goes on",
        )
    finally:
        for load in loads:
            load.stop.set()
            load.join(60)
    assert not [e for x in loads for e in x.errors], [e for x in loads for e in x.errors][:3]
    assert len(pods) == 2 and all(p.endswith(("-0", "-1")) for p in pods), pods
    with httpx.Client(timeout=30) as client:
        answered = {
            client.post(url, json={}, headers=headers).headers["x-prt-pod-name"] for _ in range(20)
        }
    assert len(answered) == 1 and answered.pop().endswith("-0")


# --- per-deployment limits ---------------------------------------------------------------


def test_max_queue_answers_429_with_retry_after(
    server: Server, admin: Admin, tmp_path: Path
) -> None:
    admin.call("POST", "/deployments/", {"key": "queued", "max_queue": 2}, status=201)
    folder = model_dir(tmp_path, "gated", str(FAULT_MODELS / "gated.py"))
    result = server.deploy(folder, "traffic", "gated", "queued")
    assert result["status"] == 200 and result["state"] == "ready", result
    url = result["api_url"]
    headers = _auth(server.session_token(url))
    gate = tmp_path / "gate"
    answers: list[int] = []
    callers = [
        threading.Thread(
            target=lambda n=n: answers.append(
                httpx.post(
                    url, json={"gate": str(gate), "n": n}, headers=headers, timeout=90
                ).status_code
            ),
            daemon=True,
        )
        for n in range(2)
    ]
    for caller in callers:
        caller.start()
    _poll(lambda: len(list(tmp_path.glob("gate.started.*"))) == 2, "both predicts started")
    r = httpx.post(url, json={}, headers=headers, timeout=30)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "queue_full"
    assert "max_queue" in r.json()["error"]["message"]
    gate.write_text("open")
    for caller in callers:
        caller.join(90)
    assert answers == [200, 200]
    assert httpx.post(url, json={}, headers=headers, timeout=30).status_code == 200
    # live: no bound any more
    admin.call("PATCH", "/deployments/queued/", {"max_queue": 0})


def test_deployment_predict_timeout_is_sooner_than_the_global_one(
    server: Server, admin: Admin, tmp_path: Path
) -> None:
    row = admin.call("POST", "/deployments/", {"key": "quick", "predict_timeout_s": 1}, 201)
    assert row["predict_timeout_s"] == 1
    folder = model_dir(tmp_path, "gated", str(FAULT_MODELS / "gated.py"))
    result = server.deploy(folder, "traffic", "hurried", "quick")
    assert result["status"] == 200 and result["state"] == "ready", result
    url = result["api_url"]
    headers = _auth(server.session_token(url))
    never = tmp_path / "never-opened"
    # the client would give up long before the global deadline: the 504 must be the 1 s one
    r = httpx.post(url, json={"gate": str(never)}, headers=headers, timeout=GLOBAL_DEADLINE_S / 2)
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert error["type"] == "predict_timeout" and "1 s" in error["message"], error
    assert httpx.post(url, json={}, headers=headers, timeout=30).status_code == 200


def test_deployment_settings_validated(admin: Admin) -> None:
    admin.call("POST", "/deployments/", {"key": "bad", "max_queue": -1}, status=400)
    admin.call("POST", "/deployments/", {"key": "bad", "replicas": 0}, status=400)
    admin.call("PATCH", "/deployments/missing/", {"replicas": 2}, status=404)
    admin.call("POST", "/deployments/", {"key": "limits"}, status=201)
    admin.call("PATCH", "/deployments/limits/", {}, status=400)
    admin.call("PATCH", "/deployments/limits/", {"memory_mb": "lots"}, status=400)
    row = admin.call("PATCH", "/deployments/limits/", {"memory_mb": 512})
    assert row["memory_mb"] == 512
    row = admin.call("PATCH", "/deployments/limits/", {"clear": ["memory_mb"]})
    assert row["memory_mb"] is None


# --- the CLI and a restart ---------------------------------------------------------------


def _cli(config: Path, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELHOST_")}
    env["MODELHOST_CONFIG_DIR"] = str(config)
    done = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else done.stdout


def test_cli_commands(server: Server, tmp_path: Path) -> None:
    url, headers, model_id = _deploy_versions(server, tmp_path, "by-cli", 2)
    config = tmp_path / "config"
    _cli(config, "login", server.url, "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)
    listing = _cli(config, "admin", "versions", "list", url)
    assert listing["model_id"] == model_id and len(listing["versions"]) == 2, listing
    done = _cli(config, "admin", "versions", "weights", url, "v1=60", "v2=40")
    assert done["traffic"]["weights"] == {"v1": 60, "v2": 40}, done
    assert (
        _cli(config, "admin", "versions", "pin", str(model_id), "v2")["traffic"]["pinned"] == "v2"
    )
    assert _cli(config, "admin", "versions", "unpin", url)["traffic"]["pinned"] is None
    assert _cli(config, "admin", "versions", "weights", url)["traffic"]["weights"] is None
    assert _cli(config, "admin", "versions", "rollback", url)["pinned"] == "v1"
    _poll(lambda: _meta(url, headers)["version"] == 1, "v1 serving after the rollback")
    row = _cli(config, "admin", "deployment-create", "cli-depl", "--max-queue", "5")
    assert row["max_queue"] == 5 and row["replicas"] == 1
    row = _cli(
        config, "admin", "deployment-set", "cli-depl", "--memory-mb", "256", "--clear", "max_queue"
    )
    assert (row["memory_mb"], row["max_queue"]) == (256, None), row
    assert _cli(config, "admin", "replicas", "cli-depl", "2")["replicas"] == 2
    deleted = _cli(config, "admin", "versions", "delete", url, "v2")
    assert deleted["deleted"] == "v2", deleted


def test_traffic_survives_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "home", free_port()).start()
    try:
        url, headers, model_id = _deploy_versions(server, tmp_path, "kept", 3)
        admin = Admin(server)
        admin.call("POST", f"/models/{model_id}/traffic/", {"weights": {"v1": 1, "v2": 1}})
        admin.call("DELETE", f"/models/{model_id}/versions/v3/")
        admin.call("POST", f"/models/{model_id}/pin/", {"version": "v1"})
        _poll(lambda: _meta(url, headers)["version"] == 1, "v1 pinned")
        server.stop()
        server.start()
        _poll(lambda: _meta(url, headers)["state"] == "ready", "serving after the restart")
        traffic = _meta(url, headers)["traffic"]
        assert traffic["pinned"] == "v1" and traffic["weights"] == {"v1": 1, "v2": 1}, traffic
        assert httpx.post(url + "v3/", json={}, headers=headers).status_code == 404
        admin = Admin(server)
        admin.call("DELETE", f"/models/{model_id}/pin/")
        _poll(
            lambda: _meta(url, headers)["traffic"]["serving"] == {"v1": 1, "v2": 1},
            "the split after the restart",
        )
    finally:
        server.stop()


def _version_workers(home: Path, name: str, version: int) -> list[int]:
    """Live worker processes of `name` v`version` (found by their spec file in /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"modelhost.worker" not in argv:
                continue
            spec = json.loads(
                Path(next(a.decode() for a in argv if a.endswith(b".json"))).read_text()
            )
        except (OSError, StopIteration, ValueError):
            continue
        if str(home) in spec["socket_path"] and (spec["name"], spec["version"]) == (name, version):
            found.append(int(entry))
    return found


def test_a_request_whose_version_retires_while_its_body_arrives_goes_to_the_new_one(
    server: Server, tmp_path: Path
) -> None:
    """KEEP_VERSIONS=1: v2 becoming ready retires v1 while a request routed to v1 is still
    sending its body; it is answered by v2, not cut."""
    url, headers, _ = _deploy_versions(server, tmp_path, "rerouted", 1)
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b'{"part": '
        release.wait(120)
        yield b'"two"}'

    answer: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answer.append(
            httpx.post(
                url,
                content=body(),
                headers={**headers, "content-type": "application/json"},
                timeout=120,
            )
        ),
        daemon=True,
    )
    sender.start()
    _poll(lambda: _version_workers(server.home, "rerouted", 1), "v1's worker")
    folder = model_dir(tmp_path / "rerouted-2", "rerouted", "echo.py")
    result = server.deploy(folder, "traffic", "rerouted")
    assert result["status"] == 200 and result["version"] == 2, result
    _poll(lambda: not _version_workers(server.home, "rerouted", 1), "v1's worker gone")
    release.set()
    sender.join(120)
    assert answer, "no answer"
    r = answer[0]
    assert r.status_code == 200, r.text
    assert r.json() == {"part": "two"} and r.headers["x-prt-model-version"] == "2"
