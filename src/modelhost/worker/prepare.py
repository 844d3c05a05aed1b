"""Getting a model version ready in its worker: files in place, then the right runner."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from modelhost.errors import InvalidModelFolder
from modelhost.wire.model_folder import read_model_json
from modelhost.wire.spec import WorkerSpec
from modelhost.worker.loader import load_model
from modelhost.worker.meta import ModelMeta
from modelhost.worker.runner import PythonModelRunner, Runner

log = logging.getLogger("modelhost.worker")


def sync_files(spec: WorkerSpec) -> None:
    """Fetch the model folder and its `download_files_from` files (only what changed)."""
    from modelhost.store import LogSyncProgress, open_store, sync_prefix

    store = open_store(spec.store_url, spec.s3_endpoint_url)
    version_dir = Path(spec.version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    sync_prefix(store, spec.store_key, version_dir)
    if spec.download_from:
        target = Path(spec.download_to)
        target.mkdir(parents=True, exist_ok=True)
        log.info("syncing %s -> %s", spec.download_from, target)
        report = sync_prefix(store, spec.download_from, target, LogSyncProgress())
        log.info(
            "synced %s: %d downloaded, %d already present",
            spec.download_from,
            len(report.downloaded),
            len(report.skipped),
        )


async def load_runner(spec: WorkerSpec) -> Runner:
    """The runner of a version whose files are in place: the supervisor fetched them
    (worker/fetch.py) before it started this worker."""
    folder = Path(spec.version_dir)
    model_json = read_model_json(folder)
    meta = ModelMeta(
        model_id=spec.model_id,
        name=spec.name,
        prefix=spec.prefix,
        version=spec.version,
        deployment=spec.deployment,
        cache_dir=spec.download_to,
        model_dir=str(folder),
        pod_name=spec.pod_name,
        model_json=model_json,
    )
    llm = None
    if "llm" in model_json:
        from modelhost.worker.llm_runner import build_llm_runner

        llm = await build_llm_runner(meta)
    if not (folder / "model.py").exists():
        if llm is None:
            raise InvalidModelFolder(
                'the model folder has no model.py and no "llm" section in model.json'
            )
        return llm  # a no-code LLM folder
    module_name = f"modelhost_model_{spec.model_id}_v{spec.version}"
    model = await asyncio.to_thread(load_model, folder, module_name)
    runner = PythonModelRunner(model, meta)
    if llm is None:
        return runner
    from modelhost.worker.llm_runner import LLMWithModelRunner

    return LLMWithModelRunner(llm, runner)
