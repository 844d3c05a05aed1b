"""Registry side of versions and traffic: weights, pin, delete, deployment limits
(migration 0003)."""

from __future__ import annotations

import pytest

from modelhost.errors import BadRequest, NotFound
from modelhost.registry import ModelRow, Registry


def _model(registry: Registry) -> ModelRow:
    registry.ensure_prefix("p")
    registry.ensure_deployment("cpu")
    return registry.get_or_create_model("p", "m", "cpu")


def test_weights_split_and_new_versions_start_at_zero(registry: Registry) -> None:
    model = _model(registry)
    v1 = registry.create_version(model.id, "a", {}, [])
    registry.create_version(model.id, "b", {}, [])
    rows = registry.set_traffic_weights(model.id, {1: 70, 2: 30})
    assert [(r.version, r.traffic_weight) for r in rows] == [(1, 70), (2, 30)]
    current = registry.get_model_by_id(model.id)
    assert current is not None and current.weighted
    # explicit weights stay in force: a new deploy gets no traffic until given some
    assert registry.create_version(model.id, "c", {}, []).traffic_weight == 0
    # versions not named get 0
    rows = registry.set_traffic_weights(model.id, {3: 1})
    assert [(r.version, r.traffic_weight) for r in rows] == [(1, 0), (2, 0), (3, 1)]
    # empty: back to "newest ready serves"
    rows = registry.set_traffic_weights(model.id, {})
    assert {r.traffic_weight for r in rows} == {100}
    current = registry.get_model_by_id(model.id)
    assert current is not None and not current.weighted
    assert registry.create_version(model.id, "d", {}, []).traffic_weight == 100
    with pytest.raises(NotFound, match="no version 9"):
        registry.set_traffic_weights(model.id, {9: 10})
    with pytest.raises(BadRequest):
        registry.set_traffic_weights(model.id, {1: -1})
    with pytest.raises(BadRequest):
        registry.set_traffic_weights(model.id, {1: 10**20})
    with pytest.raises(BadRequest):
        registry.set_traffic_weights(model.id, {1: 10**20})
    with pytest.raises(BadRequest):
        registry.set_traffic_weights(model.id, {1: 0})
    assert registry.get_version_by_id(v1.id) is not None


def test_pin_and_delete(registry: Registry) -> None:
    model = _model(registry)
    v1 = registry.create_version(model.id, "a", {}, [])
    registry.create_version(model.id, "b", {}, [])
    assert registry.set_pinned_version(model.id, 1).pinned_version == 1
    deleted = registry.delete_version(v1.id)
    assert deleted.state == "deleted" and deleted.traffic_weight == 0
    current = registry.get_model_by_id(model.id)
    assert current is not None and current.pinned_version is None  # the pin went with it
    assert [a.version.version for a in registry.list_active_versions()] == [2]
    # a late state report from its workers does not bring it back
    assert registry.set_version_state(v1.id, "ready").state == "deleted"
    with pytest.raises(NotFound):
        registry.set_pinned_version(model.id, 1)  # deleted versions cannot be pinned
    with pytest.raises(NotFound):
        registry.set_traffic_weights(model.id, {1: 5})
    assert registry.set_pinned_version(model.id, None).pinned_version is None
    # numbers are never reused
    assert registry.create_version(model.id, "c", {}, []).version == 3


def test_deployment_limits(registry: Registry) -> None:
    row = registry.create_deployment("gpu", 2, predict_timeout_s=30.0, max_queue=8)
    assert (row.predict_timeout_s, row.max_queue, row.memory_mb) == (30.0, 8, None)
    row = registry.update_deployment("gpu", replicas=3, memory_mb=2048, predict_timeout_s=None)
    assert (row.replicas, row.predict_timeout_s, row.max_queue, row.memory_mb) == (
        3,
        None,
        8,
        2048,
    )
    active_model = registry.get_or_create_model(registry.ensure_prefix("p").key, "m", "gpu")
    registry.create_version(active_model.id, "a", {}, [])
    (active,) = registry.list_active_versions()
    assert active.deployment == row and active.replicas == 3
    with pytest.raises(BadRequest, match="unknown deployment setting"):
        registry.update_deployment("gpu", colour=1)
    with pytest.raises(BadRequest, match="max_queue must be an integer"):
        registry.update_deployment("gpu", max_queue=1.5)
    with pytest.raises(BadRequest, match="max_queue must be from 0 to 1000000"):
        registry.update_deployment("gpu", max_queue=10**20)
    with pytest.raises(BadRequest, match="predict_timeout_s must be from 0"):
        registry.update_deployment("gpu", predict_timeout_s=-1)
    with pytest.raises(NotFound):
        registry.update_deployment("missing", max_queue=1)
