"""Admin operations on versions and deployments: traffic weights, pin, roll back, delete,
replicas and per-deployment limits. Each one is recorded in the registry (so a restart keeps
it), applied to the running gateway at once, and written to the audit log.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelhost.errors import Conflict, NotFound
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.gateway.versions import VersionManager, traffic_json
from modelhost.registry import DeploymentRow, Registry, VersionRow, VersionState
from modelhost.settings import Settings


class VersionAdmin:
    def __init__(
        self, registry: Registry, versions: VersionManager, routes: RouteTable, settings: Settings
    ) -> None:
        self.registry = registry
        self.versions = versions
        self.routes = routes
        self.settings = settings

    async def describe(self, model_id: int) -> dict[str, Any]:
        """Every version (deleted ones too) with its state, weight and replicas."""
        model = await self._model(model_id)
        rows = await asyncio.to_thread(self.registry.list_versions, model_id)
        entry = self.routes.by_id(model_id)
        live = entry.versions if entry is not None else {}
        versions = []
        for row in rows:
            workers = live.get(row.version)
            versions.append(
                {
                    "version": row.version,
                    "state": workers.state if workers is not None else row.state,
                    "traffic_weight": row.traffic_weight,
                    "replicas": [r.pod for r in workers.replicas] if workers is not None else [],
                    "error": row.error,
                }
            )
        return {
            "model_id": model_id,
            "model": f"{model.prefix_key}/{model.name}",
            "deployment": model.deployment_key,
            "traffic": traffic_json(entry) if entry is not None else None,
            "versions": versions,
        }

    async def set_weights(self, actor: str, model_id: int, weights: dict[int, int]) -> None:
        """Split the versionless URL by `weights` (empty: the newest ready version serves);
        versions given a weight that are not running are started."""
        rows = await asyncio.to_thread(self.registry.set_traffic_weights, model_id, weights)
        entry = self.routes.by_id(model_id)
        if entry is not None:
            entry.weighted = bool(weights)
            entry.weights.update({r.version: r.traffic_weight for r in rows})
            entry.refresh()
            self.versions.retire_unused(entry)
        for number, weight in weights.items():
            if weight > 0:
                await self._ensure_running(model_id, number)
        await self._audit(actor, "model.traffic", model_id, weights=weights)

    async def pin(self, actor: str, model_id: int, number: int | None) -> None:
        """The versionless URL serves only `number` (once it is ready; it is started if it
        is not running); None lifts the pin."""
        await asyncio.to_thread(self.registry.set_pinned_version, model_id, number)
        entry = self.routes.by_id(model_id)
        if entry is not None:
            entry.pinned = number or 0
            entry.refresh()
            self.versions.retire_unused(entry)
        if number is not None:
            await self._ensure_running(model_id, number)
        await self._audit(actor, "model.pin", model_id, version=number)

    async def rollback(self, actor: str, model_id: int) -> int:
        """Pin the newest version older than the one serving now (not failed, not deleted)."""
        entry = self._entry(model_id)
        serving = entry.serving
        current = entry.pinned or (serving.info.version if serving is not None else 0)
        rows = await asyncio.to_thread(self.registry.list_versions, model_id)
        older = [r.version for r in rows if r.version < current and _usable(r)]
        if not older:
            raise Conflict(
                f"{entry.prefix}/{entry.name} has no version older than v{current} to roll back to"
            )
        target = max(older)
        await self.pin(actor, model_id, target)
        await self._audit(actor, "model.rollback", model_id, version=target, was=current)
        return target

    async def delete(self, actor: str, model_id: int, number: int) -> None:
        """Out of routing at once (its URL answers 404), drained and stopped in the
        background, marked deleted in the registry (never started again)."""
        row = await asyncio.to_thread(self.registry.get_version, model_id, number)
        if row is None or row.state == VersionState.DELETED:
            raise NotFound(f"model id {model_id} has no version {number}")
        entry = self.routes.by_id(model_id)
        if entry is not None:
            _check_not_last(entry, number)
        await asyncio.to_thread(self.registry.delete_version, row.id)
        if entry is not None:
            self.versions.forget(entry, number)
        await self._audit(actor, "version.delete", model_id, version=number)

    async def update_deployment(
        self, actor: str, key: str, changes: dict[str, Any]
    ) -> DeploymentRow:
        """Replicas and limits, applied to the running versions of the deployment's models:
        replicas start or drain now, `max_queue` applies now, the predict deadline and the
        memory bound to workers started from now on."""
        row = await asyncio.to_thread(lambda: self.registry.update_deployment(key, **changes))
        self.versions.apply_deployment(row, scale="replicas" in changes)
        await asyncio.to_thread(
            self.registry.audit, actor, "deployment.update", {"key": key, **changes}
        )
        return row

    # -- helpers -----------------------------------------------------------------------

    async def _ensure_running(self, model_id: int, number: int) -> None:
        """Start a version that is not running (stopped by KEEP_VERSIONS, say)."""
        entry = self.routes.by_id(model_id)
        workers = entry.versions.get(number) if entry is not None else None
        if workers is not None and self.versions.running(workers):
            return

        def rows() -> tuple[Any, VersionRow | None, Any]:
            model = self.registry.get_model_by_id(model_id)
            version = self.registry.get_version(model_id, number)
            deployment = model and self.registry.get_deployment(model.deployment_key)
            return model, version, deployment

        model, version, deployment = await asyncio.to_thread(rows)
        if model is None or version is None or deployment is None:
            raise NotFound(f"model id {model_id} has no version {number}")
        self.versions.ensure_running(model, version, deployment)

    def _entry(self, model_id: int) -> ModelEntry:
        entry = self.routes.by_id(model_id)
        if entry is None:
            raise NotFound(f"model id {model_id} has no loaded version")
        return entry

    async def _model(self, model_id: int) -> Any:
        model = await asyncio.to_thread(self.registry.get_model_by_id, model_id)
        if model is None:
            raise NotFound(f"model id {model_id} does not exist")
        return model

    async def _audit(self, actor: str, action: str, model_id: int, **detail: Any) -> None:
        detail = {"model_id": model_id, **detail}
        await asyncio.to_thread(self.registry.audit, actor, action, detail)


def _usable(row: VersionRow) -> bool:
    return row.state not in (VersionState.DELETED, VersionState.FAILED)


def _check_not_last(entry: ModelEntry, number: int) -> None:
    """Deleting the only ready version would leave the model answering nothing."""
    workers = entry.versions.get(number)
    if workers is None or workers.state != "ready":
        return
    if not any(w.state == "ready" for n, w in entry.versions.items() if n != number):
        raise Conflict(
            f"v{number} is the only ready version of {entry.prefix}/{entry.name}; deploy or "
            "start (pin) another one before deleting it"
        )
