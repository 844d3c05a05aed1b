"""A real two-node Ray cluster on this machine, for the Ray runtime's tests.

Both nodes bind 127.0.0.1 on ports picked free here and keep their files under a temp
folder of their own; stopping kills exactly the processes whose command line names that
folder (never `ray stop`, which would stop every Ray on the machine: other tests' too).
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


@dataclass
class RayCluster:
    temp_dir: Path
    address: str = ""
    logs: list[str] = field(default_factory=list)

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

    def _start(self, args: list[str], temp: Path) -> None:
        common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]
        run = subprocess.run(
            [RAY, "start", *args, *common, *self._ports()],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
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
        self.address = f"127.0.0.1:{port}"
        self._start(
            [
                f"--address={self.address}",
                "--num-cpus=2",
                "--resources=" + json.dumps({"node_b": 10}),
            ],
            self.temp_dir / "b",
        )
        return self

    def pids(self, marker: str | None = None) -> list[int]:
        """Processes whose command line names our temp folder (and `marker`, if given)."""
        needle = str(self.temp_dir).encode()
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline and (marker is None or marker.encode() in cmdline):
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
