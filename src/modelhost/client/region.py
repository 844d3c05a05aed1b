"""A server as Practicus AI's SDK calls it: a *region* with its prefixes, deployments, models.

``prt.get_region()`` / ``prt.current_region()`` / ``prt.get_default_region()`` return a
`Region` for the saved (or ``MODELHOST_*``) credentials. Its lists are read from the console
API on first use and kept; ``reload()`` reads them again:

- ``model_list``: ``GET /console/api/modelhost/models/`` (the models the caller may use);
- ``model_prefix_list`` / ``model_deployment_list``: the admin lists (``prefixes/``,
  ``deployments/``) for an admin; for anyone else, the prefixes and deployments of the
  models they can see (a non-admin cannot list what they have no model in).

Each list is a ``list`` with ``to_pandas()`` (needs pandas: ``modelhost[classic]``).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from modelhost.client import _console
from modelhost.client._sync import run_sync
from modelhost.client.credentials import Credentials, load_credentials
from modelhost.client.errors import ApiError

MODELS_PATH = "/console/api/modelhost/models/"
PREFIXES_PATH = "/console/api/modelhost/prefixes/"
DEPLOYMENTS_PATH = "/console/api/modelhost/deployments/"

T = TypeVar("T")


class PrtList(list[T], Generic[T]):
    """A list of region items; ``to_pandas()`` gives one row per item."""

    def to_pandas(self) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "to_pandas() needs pandas: pip install 'modelhost[classic]'"
            ) from None
        return pd.DataFrame([asdict(item) for item in self])  # type: ignore[call-overload]


@dataclass(frozen=True)
class ModelPrefix:
    """A model prefix; ``key`` and ``prefix`` are the same path (``models/team``)."""

    key: str
    prefix: str
    id: int | None = None


@dataclass(frozen=True)
class ModelDeployment:
    key: str
    id: int | None = None
    replicas: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model the caller may use; ``versions`` is ``None`` when nothing is deployed."""

    model_id: int | None
    name: str
    prefix: str
    deployment: str | None
    version: int | None
    state: str | None
    versions: str | None
    api_url: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.prefix}/{self.name}")


@dataclass(frozen=True)
class RegionLists:
    models: PrtList[ModelInfo]
    prefixes: PrtList[ModelPrefix]
    deployments: PrtList[ModelDeployment]


class Region:
    """One modelhost server, seen with one set of credentials."""

    def __init__(self, creds: Credentials) -> None:
        self._creds = creds
        self.url = creds.url
        self.username = creds.email.split("@", 1)[0] if creds.email else None
        self.email = creds.email
        self._lists: RegionLists | None = None

    def __repr__(self) -> str:
        return f"Region(url={self.url!r}, username={self.username!r})"

    def reload(self) -> None:
        self._lists = run_sync(aregion_lists(self._creds))

    def _loaded(self) -> RegionLists:
        if self._lists is None:
            self.reload()
        assert self._lists is not None
        return self._lists

    @property
    def model_list(self) -> PrtList[ModelInfo]:
        return self._loaded().models

    @property
    def model_prefix_list(self) -> PrtList[ModelPrefix]:
        return self._loaded().prefixes

    @property
    def model_deployment_list(self) -> PrtList[ModelDeployment]:
        return self._loaded().deployments


def get_region(url: str | None = None) -> Region:
    """The region (server) of `url`, or of ``MODELHOST_URL``, or the last one logged in to."""
    return Region(load_credentials(url))


async def aregion_lists(creds: Credentials) -> RegionLists:
    async with _console.http_client() as client:
        models_response = await _console.authorized_request(client, creds, "GET", MODELS_PATH)
        models = PrtList(_model(creds.url, row) for row in models_response.json())
        admin = await asyncio.gather(
            _admin_list(client, creds, PREFIXES_PATH), _admin_list(client, creds, DEPLOYMENTS_PATH)
        )
    prefixes_rows, deployment_rows = admin
    if prefixes_rows is None:  # not an admin: what the visible models use
        prefixes_rows = [{"key": k} for k in sorted({m.prefix for m in models})]
    if deployment_rows is None:
        keys = sorted({m.deployment for m in models if m.deployment})
        deployment_rows = [{"key": k} for k in keys]
    return RegionLists(
        models,
        PrtList(ModelPrefix(r["key"], r["key"], r.get("id")) for r in prefixes_rows),
        PrtList(ModelDeployment(r["key"], r.get("id"), r.get("replicas")) for r in deployment_rows),
    )


async def _admin_list(client: Any, creds: Credentials, path: str) -> list[dict[str, Any]] | None:
    """An admin list, or None when the caller is not an admin."""
    try:
        response = await _console.authorized_request(client, creds, "GET", path)
    except ApiError as exc:
        if exc.status in (401, 403):
            return None
        raise
    rows = response.json()
    return rows if isinstance(rows, list) else None


def _model(base_url: str, row: dict[str, Any]) -> ModelInfo:
    versions = row.get("versions") or {}
    prefix = str(row.get("prefix", ""))
    name = str(row["name"])
    return ModelInfo(
        model_id=row.get("model_id"),
        name=name,
        prefix=prefix,
        deployment=row.get("deployment"),
        version=row.get("version"),
        state=row.get("state"),
        versions=", ".join(versions) if versions else None,
        api_url=f"{base_url}/{prefix}/{name}/",
    )
