"""A real two-node Ray cluster on this machine, for the Ray runtime's tests.

Both nodes bind the loopback address `NODE_IP` on ports picked free here and keep their
files under a temp folder of their own. Not 127.0.0.1: `ray start` replaces "127.0.0.1",
"localhost" and "::1" with the machine's routable address (`resolve_ip_for_localhost`,
Ray 2.60), so a cluster started with `--node-ip-address=127.0.0.1` listens on the private
address; any other 127/8 address is taken as given and stays on the loopback interface.

Stopping kills exactly this cluster's processes (never `ray stop`, which would stop every
Ray on the machine: other tests' too): those that carry `MARKER` in their environment,
which every process `ray start` spawns inherits. (Their command lines are not enough: the
dashboard and runtime-env agents rename themselves, and the client server's names no
folder; before, they outlived every test run.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.harness import free_port

RAY = str(Path(sys.executable).with_name("ray"))
NODE_IP = "127.0.0.2"
MARKER = "MODELHOST_TEST_RAY_CLUSTER"


@dataclass
class RayCluster:
    temp_dir: Path
    address: str = ""
    logs: list[str] = field(default_factory=list)
    # The second node's own environment (its `ray start`'s), e.g. MODELHOST_NODE_HOME.
    node_b_env: dict[str, str] = field(default_factory=dict)

    def _ports(self) -> list[str]:
        args = []
        for flag in (
            "--node-manager-port",
            "--object-manager-port",
            "--ray-client-server-port",
            "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
        ):
            args += [flag, str(free_port())]
        return args

    def _start(self, args: list[str], temp: Path, env: dict[str, str] | None = None) -> None:
        common = [f"--node-ip-address={NODE_IP}", f"--temp-dir={temp}", "--disable-usage-stats"]
        run = subprocess.run(
            [RAY, "start", *args, *common, *self._ports()],
            capture_output=True,
            text=True,
            timeout=180,
            env={
                **os.environ,
                **(env or {}),
                "RAY_USAGE_STATS_ENABLED": "0",
                MARKER: str(self.temp_dir),
            },
            check=False,
        )
        self.logs.append(run.stdout + run.stderr)
        if run.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{run.stdout}\n{run.stderr}")

    def start(self) -> RayCluster:
        port = free_port()
        self._start(
            [
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--resources=" + json.dumps({"node_a": 10}),
                "--include-dashboard=false",
            ],
            self.temp_dir / "a",
        )
        self.address = f"{NODE_IP}:{port}"
        self._start(
            [
                f"--address={self.address}",
                "--num-cpus=2",
                "--resources=" + json.dumps({"node_b": 10}),
            ],
            self.temp_dir / "b",
            self.node_b_env,
        )
        return self

    def pids(self, marker: str | None = None) -> list[int]:
        """This cluster's processes (`MARKER` in their environment; or, for one started
        before it, our temp folder on their command line); with `marker`, only those whose
        command line also names it."""
        folder = str(self.temp_dir).encode()
        tag = f"{MARKER}=".encode() + folder + b"\0"
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                ours = folder in cmdline or tag in Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if ours and (marker is None or marker.encode() in cmdline):
                found.append(int(entry))
        return found

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)


def new_cluster() -> RayCluster:
    # Short: Ray puts Unix sockets under it (their paths are limited to 107 bytes).
    return RayCluster(Path(tempfile.mkdtemp(prefix="mhray-", dir="/tmp")))
