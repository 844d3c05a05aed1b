"""The production backends end to end: PostgreSQL registry + S3 object store (moto server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from .harness import Server, free_port, model_dir

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def pg_s3_server(
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    pg_admin,  # type: ignore[no-untyped-def]
) -> Iterator[Server]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    engine, base_url = pg_admin
    schema = f"mh_e2e_{os.getpid()}"
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    db_url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    bucket = f"mh-e2e-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint, **_creds()).create_bucket(Bucket=bucket)
    srv = Server(
        tmp_path_factory.mktemp("mh-pg-s3"),
        free_port(),
        extra_env={
            **S3_ENV,
            "MODELHOST_DATABASE_URL": db_url.render_as_string(hide_password=False),
            "MODELHOST_STORE_URL": f"s3://{bucket}/modelhost",
            "MODELHOST_S3_ENDPOINT_URL": s3_endpoint,
        },
    )
    assets = srv.home / "assets" / "greeting"
    assets.mkdir(parents=True)
    (assets / "hello.txt").write_text("hello from S3")
    subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(assets), "assets/greeting/"],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    srv.start()
    yield srv
    srv.stop()
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "region_name": "us-east-1",
    }


def test_deploy_and_predict_on_postgres_and_s3(pg_s3_server: Server, folders: Path) -> None:
    folder = model_dir(
        folders,
        "reads",
        "reads_cache.py",
        # relative: download_files_to must stay inside the cache dir
        '{"download_files_from": "assets/", "download_files_to": "model-cache"}',
    )
    result = pg_s3_server.deploy(folder, "models/s3", "reader")
    assert result["state"] == "ready", result
    token = pg_s3_server.session_token(result["api_url"])
    r = httpx.post(
        result["api_url"], json={"name": "pg"}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200
    assert r.json() == {"greeting": "hello from S3", "name": "pg"}
    # the model folder itself went to the bucket, under the store prefix
    keys = [
        o["Key"]
        for o in boto3.client(
            "s3", endpoint_url=pg_s3_server.extra_env["MODELHOST_S3_ENDPOINT_URL"], **_creds()
        ).list_objects_v2(Bucket=pg_s3_server.extra_env["MODELHOST_STORE_URL"].split("/")[2])[
            "Contents"
        ]
    ]
    assert any(k.startswith("modelhost/_modelhost/models/models/s3/reader/") for k in keys)


def test_restart_brings_versions_back_from_the_registry(
    pg_s3_server: Server, folders: Path
) -> None:
    folder = model_dir(folders, "echo", "echo.py")
    result = pg_s3_server.deploy(folder, "models/s3", "survivor")
    assert result["state"] == "ready"
    pg_s3_server.stop()
    pg_s3_server.start()
    token = pg_s3_server.session_token(result["api_url"])
    deadline = 60
    import time

    started = time.time()
    while time.time() - started < deadline:
        r = httpx.post(
            result["api_url"], json={"back": True}, headers={"authorization": f"Bearer {token}"}
        )
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json() == {"back": True}


def test_missing_files_in_the_store_fail_the_version_with_the_fix(
    pg_s3_server: Server, folders: Path
) -> None:
    folder = model_dir(folders, "missing", "echo.py", '{"download_files_from": "nothing/here/"}')
    result = pg_s3_server.deploy(folder, "models/s3", "missing")
    assert result["state"] == "failed"
    assert "nothing/here/" in result["reason"] and "modelhost files upload" in result["reason"]
