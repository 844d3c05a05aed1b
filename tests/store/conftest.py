"""Store test fixtures: every store test runs against a LocalStore in a temp folder and
against a real S3-protocol server (moto in server mode, in its own process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_testkit import StoreSpec, new_bucket

from modelhost.store import ObjectStore


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if request.param == "local":
        return StoreSpec("local", root=str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = "tenant/base/" if request.param == "s3-prefixed" else ""
    return StoreSpec("s3", bucket=new_bucket(endpoint), prefix=prefix, endpoint_url=endpoint)


@pytest.fixture
def store(store_spec: StoreSpec) -> ObjectStore:
    return store_spec.open()
