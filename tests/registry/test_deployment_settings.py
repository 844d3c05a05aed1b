"""Autoscaling and placement settings of a deployment: stored, cleared, and checked."""

from __future__ import annotations

import pytest

from modelhost.errors import BadRequest
from modelhost.registry import Registry


def test_scaling_and_placement_round_trip(database_url: str) -> None:
    with Registry(database_url) as registry:
        registry.migrate()
        row = registry.create_deployment(
            "scaled",
            2,
            min_replicas=1,
            max_replicas=4,
            target_ongoing_requests=1.5,
            scale_down_delay_s=10,
            num_cpus=0.5,
            num_gpus=1,
            ray_resources={"node_b": 0.01},
            placement="spread",
        )
        assert (row.min_replicas, row.max_replicas, row.target_ongoing_requests) == (1, 4, 1.5)
        assert (row.num_cpus, row.num_gpus, row.placement) == (0.5, 1, "spread")
        assert row.ray_resources == {"node_b": 0.01}
        row = registry.update_deployment("scaled", max_replicas=None, ray_resources=None)
        assert row.max_replicas is None and row.ray_resources is None
        assert row.min_replicas == 1 and row.placement == "spread"
        assert registry.get_deployment("scaled") == row


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "must not exceed max_replicas"),
        ({"max_replicas": 0}, "max_replicas must be from 1 to 64"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests must be from 0.01"),
        ({"placement": "everywhere"}, "placement must be one of pack, spread"),
        ({"ray_resources": ["node_b"]}, "ray_resources must be an object"),
        ({"ray_resources": {"CPU": 1}}, "num_cpus"),
        ({"ray_resources": {"node_b": -1}}, "must be a number >= 0"),
        ({"num_gpus": "one"}, "num_gpus must be a number"),
    ],
)
def test_bad_settings_are_refused_by_name(
    database_url: str, changes: dict[str, object], says: str
) -> None:
    with Registry(database_url) as registry:
        registry.migrate()
        registry.ensure_deployment("checked")
        with pytest.raises(BadRequest, match=says):
            registry.update_deployment("checked", **changes)
        with pytest.raises(BadRequest, match=says):
            registry.create_deployment("checked-new", **changes)


def test_bounds_are_checked_against_the_stored_row(database_url: str) -> None:
    with Registry(database_url) as registry:
        registry.migrate()
        registry.create_deployment("bounded", min_replicas=1, max_replicas=3)
        with pytest.raises(
            BadRequest, match=r"min_replicas \(5\) must not exceed max_replicas \(3\)"
        ):
            registry.update_deployment("bounded", min_replicas=5)
        with pytest.raises(BadRequest, match="must not exceed"):
            registry.update_deployment("bounded", max_replicas=0 + 1, min_replicas=2)
        row = registry.get_deployment("bounded")
        assert row is not None and (row.min_replicas, row.max_replicas) == (1, 3)
        row = registry.update_deployment("bounded", min_replicas=5, max_replicas=6)
        assert (row.min_replicas, row.max_replicas) == (5, 6)
