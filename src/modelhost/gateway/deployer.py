"""Deploying a model folder: validate, upload to the store, record a version, start workers.

The upload arrives as a gzip tar. It is unpacked with tarfile's "data" filter (no absolute
paths, no `..`, no links out, no devices) and a size cap, checked with
`runtime.loader.check_folder` (a syntax error fails the deploy naming the line), then copied
to the object store under its own key. Workers fetch it from there, so a version can start on
any host. The previous version keeps serving until the new one is ready.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelhost.errors import BadRequest, PayloadTooLarge
from modelhost.runtime.loader import check_folder

if TYPE_CHECKING:
    from modelhost.gateway.app import Gateway

log = logging.getLogger("modelhost.deploy")
MAX_FOLDER_BYTES = 512 * 1024 * 1024
MAX_FILES = 10_000


def unpack(archive: bytes, dest: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise PayloadTooLarge(f"the model folder has over {MAX_FILES} files")
            if sum(m.size for m in members) > MAX_FOLDER_BYTES:
                raise PayloadTooLarge(
                    "the model folder is over 512 MiB; put large files in the object store "
                    "and name them in model.json's download_files_from"
                )
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadRequest(
            f"the upload is not a readable tar archive of the model folder: {exc}"
        ) from None


class Deployer:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def deploy(
        self, actor: str, deployment: str, prefix: str, name: str, archive: bytes, wait: bool = True
    ) -> dict[str, Any]:
        _check_names(prefix, name, deployment)
        registry, store = self.gw.registry, self.gw.store
        with tempfile.TemporaryDirectory(prefix="modelhost-deploy-") as tmp:
            folder = Path(tmp)
            await asyncio.to_thread(unpack, archive, folder)
            check = check_folder(folder)
            store_key = f"_modelhost/models/{prefix}/{name}/{uuid.uuid4().hex}/"
            from modelhost.store import upload_dir

            await asyncio.to_thread(upload_dir, store, folder, store_key)

        def record() -> tuple[Any, Any, int]:
            registry.ensure_prefix(prefix)
            dep = registry.ensure_deployment(deployment)
            model = registry.get_or_create_model(prefix, name, deployment)
            version = registry.create_version(model.id, store_key, check.model_json, check.hooks)
            registry.audit(
                actor, "model.deploy", {"model": f"{prefix}/{name}", "version": version.version}
            )
            return model, version, dep.replicas

        model, version, replicas = await asyncio.to_thread(record)
        log.info("deploying %s/%s v%d on %s", prefix, name, version.version, deployment)
        workers = await self.gw.start_version(model, version, replicas)
        state, reason = workers.state, workers.reason
        if wait:
            state = await workers.wait_settled(self.gw.settings.worker_start_timeout_s)
            reason = workers.reason
        base = f"{self.gw.settings.public_url}/{prefix}/{name}/"
        return {
            "api_url": base,
            "api_version_url": f"{base}v{version.version}/",
            "api_meta_url": f"{base}?get_meta=true",
            "model_id": model.id,
            "version": version.version,
            "state": state,
            "reason": reason,
        }


def _check_names(prefix: str, name: str, deployment: str) -> None:
    for label, value in (("prefix", prefix), ("model name", name), ("deployment", deployment)):
        parts = value.split("/")
        if not value or any(not p or p in (".", "..") for p in parts):
            raise BadRequest(f"invalid {label} {value!r}")
        if any(not all(c.isalnum() or c in "-_." for c in p) for p in parts):
            raise BadRequest(f"invalid {label} {value!r}: use letters, digits, '-', '_' and '.'")
    if "/" in name or "/" in deployment:
        raise BadRequest("the model name and the deployment key are one path segment each")
    if (name[:1] in ("v", "V") and name[1:].isdigit()) or name.isdigit():
        raise BadRequest(f"model name {name!r} looks like a version; pick another name")
