"""Reconcile: make this gateway's route table and workers follow the registry, after a change
notice from another gateway (gateway/changes.py) or on the fallback poll.

What the registry decides for every gateway: which versions exist (a new one is started
here too, through the same `VersionManager.ensure_running` the admin API uses; a deleted
one leaves routing and stops), the traffic policy (pin, weights), a deployment's replicas and
limits, and who may call (revocations, grants). What stays each gateway's own: whether its
workers are loading, ready or failed. A version's state column holds the last report of any
gateway, for people to read; no gateway acts on another's report, so one host's failed
worker (out of memory there, a missing GPU) never takes a version away from the others.
`stopped` (retired by MODELHOST_KEEP_VERSIONS once a newer version is ready) is likewise
decided by each gateway when its own newer version is ready, never copied from another.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from modelhost.gateway.auth import Authenticator
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.gateway.versions import VersionManager
from modelhost.registry import DeploymentRow, ModelRow, Registry, VersionRow, VersionState
from modelhost.registry.notices import Notice

log = logging.getLogger("modelhost.sync")
_READS = 3  # tries at reading a model's rows while this gateway changes its entry


@dataclass(frozen=True, slots=True)
class ModelRows:
    model: ModelRow
    versions: list[VersionRow]
    deployment: DeploymentRow


class Reconciler:
    def __init__(
        self,
        registry: Registry,
        versions: VersionManager,
        routes: RouteTable,
        auth: Authenticator,
    ) -> None:
        self.registry = registry
        self.versions = versions
        self.routes = routes
        self.auth = auth
        # Each deployment as last read: only a change is applied, and only a change of
        # `replicas` rescales (an autoscaler may run another count than the registry's).
        self._deployments: dict[str, DeploymentRow] = {}

    async def apply(self, notice: Notice) -> None:
        if notice.kind == "model" and notice.id is not None:
            await self.model_by_id(notice.id, settled_only=False)
        elif notice.kind == "deployment" and notice.key is not None:
            row = await asyncio.to_thread(self.registry.get_deployment, notice.key)
            if row is not None:
                self.deployment(row)
        elif notice.kind == "auth":
            await asyncio.to_thread(self.auth.refresh_revocations)
        else:
            await self.everything()

    async def everything(self) -> None:
        """The fallback: every model and deployment (revocations have their own poll)."""
        marks = self._marks()
        models, deployments = await asyncio.to_thread(self._all_rows)
        moved = self._marks()
        for rows in models:
            model_id = rows.model.id
            if marks.get(model_id) == moved.get(model_id):
                self.model(rows, settled_only=True)
            else:  # changed here while we read: read it again
                await self.model_by_id(model_id, settled_only=True)
        for row in deployments:
            self.deployment(row)

    async def model_by_id(self, model_id: int, settled_only: bool) -> None:
        """Read the model's rows and apply them, unless this gateway changed its entry while
        they were read (an admin call here: rows read before its commit would undo it);
        then read again. Gives up after a few tries: the next notice or poll comes."""
        for _ in range(_READS):
            mark = self._marks().get(model_id)
            rows = await asyncio.to_thread(self._model_rows, model_id)
            if rows is None:
                return
            if self._marks().get(model_id) == mark:
                self.model(rows, settled_only)
                return

    def _marks(self) -> dict[int, int]:
        """Each route entry's refresh count: it moves whenever the entry changes here."""
        return {entry.model_id: entry.generation for entry in self.routes.entries()}

    # -- models ------------------------------------------------------------------------

    def model(self, rows: ModelRows, settled_only: bool) -> None:
        """Versions new to this gateway start, deleted ones stop, the traffic policy is the
        registry's. `settled_only` skips versions still `pending`: on the poll that may be
        this gateway's own deploy between recording the version and starting it."""
        model, deployment = rows.model, rows.deployment
        entry = self.routes.by_id(model.id)
        for row in rows.versions:
            if row.state == VersionState.DELETED:
                if entry is not None and row.version in entry.versions:
                    log.info("%s/%s v%d was deleted", model.prefix_key, model.name, row.version)
                    self.versions.forget(entry, row.version)
            elif not _known(entry, row) and _startable(row, settled_only):
                log.info("%s/%s v%d: starting here too", model.prefix_key, model.name, row.version)
                self.versions.ensure_running(model, row, deployment)
        entry = self.routes.by_id(model.id)
        if entry is None:
            return
        live = {r.version: r for r in rows.versions if r.state != VersionState.DELETED}
        if _set_traffic(entry, model, live):
            entry.refresh()
            self.versions.retire_unused(entry)
        for number in _wanted(model, live):
            self.versions.ensure_running(model, live[number], deployment)

    def _model_rows(self, model_id: int) -> ModelRows | None:
        model = self.registry.get_model_by_id(model_id)
        if model is None:
            return None
        deployment = self.registry.get_deployment(model.deployment_key)
        if deployment is None:
            return None
        return ModelRows(model, self.registry.list_versions(model_id), deployment)

    def _all_rows(self) -> tuple[list[ModelRows], list[DeploymentRow]]:
        deployments = self.registry.list_deployments()
        by_key = {d.key: d for d in deployments}
        models = [
            ModelRows(m, self.registry.list_versions(m.id), by_key[m.deployment_key])
            for m in self.registry.list_models()
            if m.deployment_key in by_key
        ]
        return models, deployments

    # -- deployments -------------------------------------------------------------------

    def deployment(self, row: DeploymentRow) -> None:
        """A changed deployment's limits apply to its running versions; its replicas only
        when the registry's count changed since last read (the first read does not scale:
        the versions started with it)."""
        before = self._deployments.get(row.key)
        if row == before:
            return
        self._deployments[row.key] = row
        scale = before is not None and before.replicas != row.replicas
        self.versions.apply_deployment(row, scale=scale)


def _known(entry: ModelEntry | None, row: VersionRow) -> bool:
    return entry is not None and row.version in entry.versions


def _startable(row: VersionRow, settled_only: bool) -> bool:
    if row.state == VersionState.STOPPED:
        return False  # retired before this gateway saw it: not started, like at boot
    return not (settled_only and row.state == VersionState.PENDING)


def _set_traffic(entry: ModelEntry, model: ModelRow, live: dict[int, VersionRow]) -> bool:
    """The registry's pin and weights on the entry; True if anything changed."""
    pinned = model.pinned_version or 0
    weights = {n: r.traffic_weight for n, r in live.items() if n in entry.versions}
    if (entry.pinned, entry.weighted, entry.weights) == (pinned, model.weighted, weights):
        return False
    entry.pinned, entry.weighted, entry.weights = pinned, model.weighted, weights
    return True


def _wanted(model: ModelRow, live: dict[int, VersionRow]) -> list[int]:
    """Versions the traffic policy needs running: the pinned one, those weighted above 0."""
    wanted = {model.pinned_version} if model.pinned_version else set()
    if model.weighted:
        wanted |= {n for n, r in live.items() if r.traffic_weight > 0}
    return sorted(n for n in wanted if n in live)
