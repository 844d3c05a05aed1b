"""Shared helpers for the store tests, importable by spawned child processes.

Kept out of conftest.py because spawned children import helpers by module name, and
"conftest" is ambiguous when several test folders have one.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from modelhost.store import LocalStore, ObjectStore, S3Store, make_s3_client, sync_prefix

S3_CREDENTIALS = {
    "aws_access_key_id": "test",
    "aws_secret_access_key": "test",
    "region_name": "us-east-1",
}


def s3_client(endpoint_url: str) -> Any:
    """The production client config, with the dummy moto credentials passed explicitly."""
    return make_s3_client(endpoint_url, **S3_CREDENTIALS)


def new_bucket(endpoint_url: str) -> str:
    """A fresh bucket per test: isolation without resetting the server."""
    name = f"mh-{uuid.uuid4().hex[:16]}"
    s3_client(endpoint_url).create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class StoreSpec:
    """A picklable recipe for a store, so a spawned process can open the same one."""

    kind: str  # "local" | "s3"
    root: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""

    def open(self) -> ObjectStore:
        if self.kind == "local":
            return LocalStore(Path(self.root))
        return S3Store(
            self.bucket, self.prefix, self.endpoint_url, client=s3_client(self.endpoint_url)
        )


class SlowProgress:
    """Widens the window between "decided to download" and "done", so a missing lock
    would reliably show up as a double download."""

    def start(self, file: str, total: int) -> None:
        time.sleep(0.2)

    def advance(self, file: str, n: int) -> None:
        pass

    def done(self, file: str) -> None:
        pass


class CrashProgress:
    """Kills the process (no cleanup, no finally blocks) once bytes start flowing."""

    def start(self, file: str, total: int) -> None:
        pass

    def advance(self, file: str, n: int) -> None:
        os._exit(3)

    def done(self, file: str) -> None:
        pass


def sync_in_child(spec: StoreSpec, prefix: str, dest: str, barrier: Barrier, out: Queue) -> None:
    """Child process body: wait for the sibling, sync, report what was downloaded."""
    store = spec.open()
    barrier.wait(timeout=60)
    report = sync_prefix(store, prefix, Path(dest), SlowProgress())
    out.put((os.getpid(), report.downloaded, report.skipped))


def crash_in_child(spec: StoreSpec, prefix: str, dest: str) -> None:
    """Child process body: die in the middle of the first download."""
    sync_prefix(spec.open(), prefix, Path(dest), CrashProgress())
