"""The SDK's public calls: `login`, `get_session_token`, `deploy`.

Each is written once as a coroutine (``alogin``, ``aget_session_token``, ``adeploy``) and
exposed to synchronous callers by a one-line wrapper, so there is no twin class to keep in
step. The sync names and parameters match Practicus AI's ``prt.models`` functions, which is
what makes ``practicuscore`` a drop-in.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from modelhost.auth.tokens import unverified_expiry
from modelhost.client import _console
from modelhost.client._packing import pack_model_dir
from modelhost.client._sync import run_sync
from modelhost.client.credentials import load_credentials

# A session token with more than this left is reused: a request started with it will not
# expire midway, and callers polling get_session_token(url, token=token) make no HTTP call.
SESSION_REUSE_MARGIN_S = 300.0


async def alogin(url: str, email: str, password: str) -> None:
    """Log in, then save a refresh token (never the password) for later calls."""
    await _console.login_and_save(url, email, password)


async def aget_session_token(api_url: str, token: str | None = None) -> str:
    """A model session token for `api_url`; `token` is returned as is while still fresh."""
    if token and _seconds_left(token) > SESSION_REUSE_MARGIN_S:
        return token
    creds = load_credentials(api_url)
    async with _console.http_client() as client:
        response = await _console.authorized_request(
            client,
            creds,
            "GET",
            _console.MODEL_AUTH_PATH,
            json={"model_url": api_url},
            params={"model_url": api_url},
        )
    return str(_console.json_field(response, "token"))


async def adeploy(
    deployment_key: str,
    prefix: str,
    model_name: str,
    model_dir: str | Path | None = None,
    api_url_base: str | None = None,
) -> tuple[str, str, str]:
    """Upload the model folder and deploy it; returns (api_url, api_version_url, api_meta_url)."""
    creds = load_credentials(api_url_base)
    body = await asyncio.to_thread(pack_model_dir, Path(model_dir or Path.cwd()))
    async with _console.http_client(_console.DEPLOY_TIMEOUT) as client:
        response = await _console.authorized_request(
            client,
            creds,
            "POST",
            _console.DEPLOY_PATH,
            params={"deployment": deployment_key, "prefix": prefix, "name": model_name},
            content=body,
            headers={"content-type": "application/gzip"},
        )
    if response.json().get("state") == "failed":
        from modelhost.errors import ModelNotReady

        data = response.json()
        raise ModelNotReady(
            f"{prefix}/{model_name} v{data.get('version')} was uploaded but failed to start: "
            f"{data.get('reason')}; the previous version (if any) keeps serving"
        )
    urls = (
        _console.json_field(response, "api_url"),
        _console.json_field(response, "api_version_url"),
        _console.json_field(response, "api_meta_url"),
    )
    return str(urls[0]), str(urls[1]), str(urls[2])


def login(url: str, email: str, password: str) -> None:
    """Log in to the server at `url` and save a refresh token for it (mode 0600)."""
    run_sync(alogin(url, email, password))


def get_session_token(api_url: str, token: str | None = None, for_upload: bool = False) -> str:
    """A model session token for `api_url`; a `token` with over 5 minutes left is reused.

    ``for_upload`` is accepted as Practicus' SDK has it; uploads (`deploy`) use the console
    login here, so the session token is the same either way."""
    del for_upload
    return run_sync(aget_session_token(api_url, token))


def deploy(
    deployment_key: str,
    prefix: str,
    model_name: str,
    model_dir: str | Path | None = None,
    api_url_base: str | None = None,
) -> tuple[str, str, str]:
    """Deploy `model_dir` (default: the current folder) as `prefix`/`model_name`."""
    return run_sync(adeploy(deployment_key, prefix, model_name, model_dir, api_url_base))


def _seconds_left(token: str) -> float:
    exp = unverified_expiry(token)
    return -1.0 if exp is None else exp - time.time()
