"""What `bench.scale` starts and stops for a run on a Ray cluster: two Ray nodes on this
machine, a PostgreSQL schema for the registry and an S3 test server (moto) for the store.

Everything binds loopback addresses: 127.0.0.1, and 127.0.0.2 for the Ray nodes (Ray turns
127.0.0.1 into the machine's routable address). The Ray nodes are the tests' `RayCluster`
(tests/scale/ray_cluster.py: ports picked free, files under a temp folder of their own,
stopped by killing exactly the processes it started, never `ray stop`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parent.parent / "tests"
PG_URL = os.environ.get(
    "MODELHOST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
S3_CREDS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def ray_nodes() -> Iterator[str]:
    """Two Ray nodes (`node_a`, `node_b` resources, 2 CPUs each); yields the address."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from scale.ray_cluster import NODE_IP, new_cluster

    print(f"starting a two-node Ray cluster on {NODE_IP} ...", file=sys.stderr)
    cluster = new_cluster().start()
    try:
        yield cluster.address
    finally:
        cluster.stop()


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema in the machine's PostgreSQL; yields its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"mh_bench_{secrets.token_hex(4)}"
    engine = create_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@contextmanager
def s3_server(port: int) -> Iterator[str]:
    """A moto S3 server with a bucket `bench`; yields its endpoint URL."""
    import boto3

    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/moto-api/", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the moto S3 server did not start") from None
                    time.sleep(0.1)
            creds = {k.lower(): v for k, v in S3_CREDS.items() if k != "AWS_DEFAULT_REGION"}
            boto3.client("s3", endpoint_url=url, region_name="us-east-1", **creds).create_bucket(
                Bucket="bench"
            )
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def cluster_env(ray_address: str, s3_port: int) -> Iterator[dict[str, str]]:
    """The environment of `MODELHOST_RUNTIME=ray` gateways: Ray (started here unless
    `ray_address` names one) and the S3 store; each gateway adds a registry of its own
    (`pg_schema`)."""
    with ExitStack() as stack:
        address = ray_address or stack.enter_context(ray_nodes())
        s3 = stack.enter_context(s3_server(s3_port))
        yield {
            **S3_CREDS,
            "MODELHOST_S3_ENDPOINT_URL": s3,
            "MODELHOST_RAY_ADDRESS": address,
            "MODELHOST_WORKER_HOST": "127.0.0.1",
        }
