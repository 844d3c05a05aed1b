"""Per-gateway folders and names (settings.py): gateways sharing one home never share a
worker socket, work folder or unpacked version."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from modelhost.settings import Settings


def test_a_gateway_id_gives_each_gateway_its_own_folders(tmp_path: Path) -> None:
    one = Settings.from_env({}, home=tmp_path, gateway_id="g1")
    two = Settings.from_env({}, home=tmp_path, gateway_id="g2")
    for name in ("run_dir", "workers_dir", "versions_dir"):
        assert getattr(one, name).parent == getattr(two, name).parent
        assert getattr(one, name) != getattr(two, name)
    assert one.run_dir == tmp_path / "run" / "g1"
    assert (one.jwt_key_path, one.database_url) == (two.jwt_key_path, two.database_url)


def test_without_an_id_the_layout_is_unchanged_and_notices_name_the_process(
    tmp_path: Path,
) -> None:
    s = Settings.from_env({}, home=tmp_path)
    assert (s.run_dir, s.workers_dir) == (tmp_path / "run", tmp_path / "work")
    assert s.instance_id == f"{socket.gethostname()}-{os.getpid()}"


def test_reuse_port_without_an_id_still_separates_the_folders(tmp_path: Path) -> None:
    s = Settings.from_env({"MODELHOST_REUSE_PORT": "1"}, home=tmp_path)
    assert s.reuse_port and s.gateway_id == s.instance_id
    assert s.workers_dir == tmp_path / "work" / s.instance_id


@pytest.mark.parametrize("bad", ["..", "a/b", "x y", "é"])
def test_a_gateway_id_must_be_one_plain_path_segment(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="MODELHOST_GATEWAY_ID"):
        Settings.from_env({"MODELHOST_GATEWAY_ID": bad}, home=tmp_path)


def test_ray_namespace_is_one_per_registry(tmp_path: Path) -> None:
    def namespace(url: str, **extra: str) -> str:
        return Settings(home=tmp_path, database_url=url, **extra).resolved().ray_namespace

    pg = "postgresql+psycopg://mh:{}@db:5432/modelhost"
    assert namespace(pg.format("one")) == namespace(pg.format("two"))  # not the password
    assert "one" not in namespace(pg.format("one"))
    assert namespace(pg.format("x")) != namespace(pg.format("x") + "2")
    assert namespace("sqlite:///a.db").startswith("modelhost-")
    assert namespace("sqlite:///a.db", ray_namespace="shared") == "shared"
