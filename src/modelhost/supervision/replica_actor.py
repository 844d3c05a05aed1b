"""One replica on a Ray node: the Ray actor that runs a model version's worker there.

The actor does on its node what the local supervisor does on the gateway's host, with the
same code: the fetch step (`python -m modelhost.worker.fetch`, in the actor's environment,
which holds the object store's credentials), then the worker (`python -m modelhost.worker`,
sandboxed, with the allow-listed environment of `worker_env`) as its child. The worker
listens on TCP: the actor binds the socket (so it knows the port before the worker runs) and
hands it down; every connection must prove the replica's key (wire/handshake.py).

The replica's files (its spec, the model folder, the download cache, the worker's home)
are kept under the node's own `MODELHOST_NODE_HOME` when its environment sets it, else at
the gateway's paths, made on the node (`on_this_node`).

The actor keeps the worker's memory bound (`memory_mb`) as the gateway does for a local
worker (`memory.py`): it polls the worker's resident memory and kills it past the bound, and
the exit it reports names the bound.

The worker's own Prometheus metrics stay on the node too: `metrics()` merges its files there
for the gateway's `/metrics`.

The actor lives exactly as long as its worker: when the worker process exits without being
asked to, the actor exits too, so Ray restarts it (`max_restarts`) and the new actor starts
a new worker, with or without a gateway watching. Requests never pass through Ray: the
gateway connects to `address()` directly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from modelhost.supervision.memory import POLL_S, over_bound
from modelhost.supervision.worker_env import merged_metrics, metrics_dir, worker_environ
from modelhost.wire.spec import WorkerSpec

log = logging.getLogger("modelhost.replica")
# A worker that exits on its own makes the actor exit with this (Ray then restarts it).
WORKER_EXITED = 75
# Set in a node's environment (`MODELHOST_NODE_HOME=/data/modelhost ray start ...`): where
# replicas on that node keep their files; unset, they use the gateway's paths.
NODE_HOME_ENV = "MODELHOST_NODE_HOME"


class ReplicaActor:
    """The body of the `mh-v<version>-r<n>` actor (made a Ray actor by ray_placement.py)."""

    def __init__(self, spec: dict[str, Any], passthrough: str, host: str) -> None:
        self.spec = WorkerSpec(**spec)
        self.passthrough = passthrough
        self.host = host
        self.failure = ""
        self.exit = ""
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.ready = threading.Event()
        self.exited = threading.Event()
        self.reported = threading.Event()  # a `wait_exit` call is answering with `exit`
        self.exceeded = ""  # why the memory bound killed the worker ("" = it did not)
        # The thread that starts the worker waits for it: Linux's parent-death signal (the
        # worker's and the fetch step's `die_with_parent`) follows the creating thread.
        threading.Thread(target=self._run, name="replica", daemon=True).start()

    # -- called by the gateway -------------------------------------------------------

    def address(self) -> tuple[str, int, str]:
        """Where the worker listens (host, port) and which version's files it serves;
        blocks while the files are fetched. RuntimeError names why it could not start."""
        self.ready.wait()
        if self.failure:
            raise RuntimeError(self.failure)
        return self.host, self.port, self.spec.store_key

    def wait_exit(self) -> str:
        """Blocks until the worker exits; how it ended. When it was not asked to stop, the
        actor exits right after, once this answer is on its way (or after at most 1.2 s:
        the call may then fail with the actor's death instead)."""
        self.exited.wait()
        self.reported.set()
        return self.exit

    def metrics(self) -> list[Any]:
        """The worker's own prometheus_client metrics (`PROMETHEUS_MULTIPROC_DIR` in its home
        on this node), merged; an exited worker's `live*` gauges left out."""
        folder = metrics_dir(self.spec.work_dir)
        proc = self.proc
        if proc is not None and self.exited.is_set():
            mark_process_dead(proc.pid, str(folder))
        return merged_metrics(folder)

    def node(self) -> str:
        """The Ray node this replica runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def stop(self, timeout: float) -> str:
        """SIGTERM (the worker finishes what it has and runs `cleanup`), SIGKILL after
        `timeout`; returns how it ended."""
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.exited.wait(timeout)
        return self.exit

    # -- the worker's life -----------------------------------------------------------

    def _run(self) -> None:
        # Ray runs actor code in threads that block signals; a child inherits the mask, and
        # a worker with SIGTERM blocked would not notice its actor's death (the parent-death
        # signal) nor a stop. The worker and the fetch step start from a clear mask.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            self._start()
        except Exception as exc:  # the gateway's address() call gets the reason
            log.exception("replica %s could not start", self.spec.pod_name)
            self.failure = f"the replica could not start: {type(exc).__name__}: {exc}"
            self.ready.set()
            return
        proc = self.proc
        if proc is None:  # it failed, and said why
            return
        if self.spec.memory_mb > 0:
            threading.Thread(target=self._guard_memory, args=(proc,), daemon=True).start()
        code = proc.wait()
        self.exit = self.exceeded or _exit_reason(code)
        self.exited.set()
        if not self.stopping:
            log.error("worker %s %s: actor exits, Ray restarts it", self.spec.pod_name, self.exit)
            # Let a waiting gateway hear how the worker ended before the actor's death
            # (else it only learns that the actor died).
            if self.reported.wait(1.0):
                time.sleep(0.2)
            logging.shutdown()
            os._exit(WORKER_EXITED)

    def _guard_memory(self, proc: subprocess.Popen[bytes]) -> None:
        """Every `POLL_S` while the worker runs: past its bound, SIGKILL (it may be stuck)."""
        limit = self.spec.memory_mb
        while not self.exited.wait(POLL_S):
            exceeded = over_bound(proc.pid, limit)
            if exceeded:
                self.exceeded = exceeded
                log.error("worker %s %s", self.spec.pod_name, exceeded)
                proc.kill()  # Popen checks that it has not been reaped (no reused pid)
                return

    def _start(self) -> None:
        spec = self.spec = on_this_node(self.spec, os.environ.get(NODE_HOME_ENV, ""))
        if not self.host:
            import ray

            self.host = ray.util.get_node_ip_address()
        run_dir = _private(Path(spec.socket_path).parent)
        _private(Path(spec.work_dir))
        listener = socket.create_server((self.host, 0))
        self.port = listener.getsockname()[1]
        spec = replace(spec, listen_fd=listener.fileno())
        spec_path = run_dir / f"{Path(spec.socket_path).stem}.json"
        spec.dump(spec_path)
        fetch = subprocess.run(
            [sys.executable, "-P", "-m", "modelhost.worker.fetch", str(spec_path)],
            stdout=subprocess.PIPE,
            cwd=run_dir,
            start_new_session=True,
            check=False,
        )
        if fetch.returncode != 0:
            lines = fetch.stdout.decode(errors="replace").strip().splitlines()
            self.failure = lines[-1] if lines else f"fetching model files: {fetch.returncode}"
            listener.close()
            self.ready.set()
            return
        env = worker_environ(os.environ, self.passthrough, spec.model_json, spec.work_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "modelhost.worker", str(spec_path)],
            env=env,
            cwd=spec.work_dir,
            pass_fds=[listener.fileno()],
            start_new_session=True,
        )
        listener.close()  # the worker holds its own copy
        self.ready.set()


def on_this_node(spec: WorkerSpec, node_home: str) -> WorkerSpec:
    """The spec with its folders where this node keeps them: under `node_home` (the node's
    `MODELHOST_NODE_HOME`) laid out as a gateway's home is, hidden from the worker as the
    gateway hides its own; unchanged (the gateway's paths, made on this node) when it is
    empty."""
    if not node_home:
        return spec
    home = Path(node_home).absolute()
    run, versions = home / "run", home / "versions"
    return replace(
        spec,
        socket_path=str(run / Path(spec.socket_path).name),
        version_dir=str(versions / spec.prefix / spec.name / f"v{spec.version}"),
        cache_dir=str(home / "cache"),
        work_dir=str(home / "work" / Path(spec.work_dir).name),
        hide_paths=[*spec.hide_paths, str(home), str(run), str(versions)],
    )


def _private(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
