"""Echo throughput through MODELHOST_RUNTIME=ray vs the local runtime (docs/scale-out.md).

    python -m bench.ray_runtime [DURATION_S] [ROUNDS]      (defaults: 5 s, 5 rounds)

One replica each: a local worker (Unix socket) and a worker in a Ray actor on a two-node Ray
cluster started on this machine (authenticated TCP), both gateways up side by side, measured
with bench/overhead.py's method (`wrk -t1 -c64`, alternating rounds, median round). The Ray
cluster is the tests' one (tests/scale/ray_cluster.py: own ports and temp folder, stopped by
its own PIDs).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from bench.overhead import measure_rounds, serve_modelhost

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from scale.ray_cluster import new_cluster


def main() -> None:
    duration = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    cluster = new_cluster()
    try:
        cluster.start()
        with ExitStack() as stack:
            local = stack.enter_context(serve_modelhost(1))
            ray_env = {
                "MODELHOST_RUNTIME": "ray",
                "MODELHOST_RAY_ADDRESS": cluster.address,
                "MODELHOST_RAY_NAMESPACE": "mh-bench",
                "MODELHOST_WORKER_HOST": "127.0.0.1",
            }
            ray = stack.enter_context(serve_modelhost(1, ray_env))
            ray.system = "modelhost (ray runtime)"
            for r in measure_rounds([local, ray], duration, rounds):
                print(
                    f"{r.system}: median {r.rps:.0f} req/s, rounds {r.rounds}, "
                    f"p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, errors {r.errors}"
                )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
