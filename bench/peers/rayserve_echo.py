"""Peer: Ray Serve's echo, one replica. Run: python rayserve_echo.py PORT (blocks)."""

import sys
import time

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, max_ongoing_requests=64)
class Echo:
    async def __call__(self, request: Request) -> dict:
        return await request.json()


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Echo.bind(), route_prefix="/echo")
    while True:
        time.sleep(3600)
