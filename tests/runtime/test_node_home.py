"""Where a Ray replica keeps its files on its node (`replica_actor.on_this_node`)."""

from __future__ import annotations

from pathlib import Path

from modelhost.supervision.replica_actor import on_this_node
from modelhost.wire.spec import WorkerSpec

GATEWAY = Path("/srv/gateway-home")


def _spec() -> WorkerSpec:
    return WorkerSpec(
        socket_path=str(GATEWAY / "run" / "w7-1.sock"),
        version_dir=str(GATEWAY / "versions" / "team/llm" / "chat" / "v3"),
        store_url="s3://bucket/modelhost",
        store_key="models/7",
        model_id=4,
        name="chat",
        prefix="team/llm",
        version=3,
        deployment="gpu",
        cache_dir=str(GATEWAY / "cache"),
        pod_name="gpu-mh-v7-r1",
        work_dir=str(GATEWAY / "work" / "w7-1"),
        hide_paths=[str(GATEWAY), str(GATEWAY / "jwt.key")],
    )


def test_a_node_home_holds_every_folder_of_the_replica_and_is_hidden() -> None:
    spec = on_this_node(_spec(), "/data/mh")
    assert spec.socket_path == "/data/mh/run/w7-1.sock"
    assert spec.version_dir == "/data/mh/versions/team/llm/chat/v3"
    assert spec.cache_dir == "/data/mh/cache"
    assert spec.work_dir == "/data/mh/work/w7-1"
    # the gateway's hidden paths stay hidden; the node home, its sockets and other models'
    # folders are hidden as the gateway's are (the worker's own folders are kept visible)
    assert spec.hide_paths == [
        str(GATEWAY),
        str(GATEWAY / "jwt.key"),
        "/data/mh",
        "/data/mh/run",
        "/data/mh/versions",
    ]
    assert (spec.store_key, spec.pod_name, spec.prefix) == ("models/7", "gpu-mh-v7-r1", "team/llm")


def test_without_a_node_home_the_gateway_paths_are_kept() -> None:
    assert on_this_node(_spec(), "") == _spec()
