"""HTTP calls to the console API with a console access token.

Logging in costs an argon2 check on the server, so the access token is cached in memory
per server and user until shortly before it expires; if the server still refuses a cached
token (revoked, server restarted with a new key) the SDK logs in once more and retries.
A long-lived access token (``MODELHOST_ACCESS_TOKEN``) is used as the bearer directly.

A saved login (``modelhost login``) is a refresh token. The server rotates refresh tokens:
each is good for one refresh, and presenting a used one again revokes the whole login. So
a refresh runs under a lock file next to the credentials file (other threads and processes
wait, then find the new access token cached or the new refresh token in the file), and the
new refresh token is written back before the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from modelhost.auth.tokens import unverified_expiry
from modelhost.client.credentials import (
    Credentials,
    credentials_path,
    remove_credentials,
    replace_refresh_token,
    save_credentials,
    saved_refresh_token,
    server_url,
)
from modelhost.client.errors import ApiError
from modelhost.errors import Unauthorized

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the in-process lock only
    fcntl = None  # type: ignore[assignment]

AUTH_PATH = "/console/api/auth/"
REFRESH_PATH = "/console/api/auth/refresh/"
LOGOUT_PATH = "/console/api/auth/logout/"
MODEL_AUTH_PATH = "/console/api/modelhost/model-auth/"
DEPLOY_PATH = "/console/api/modelhost/deploy/"

API_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEPLOY_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# A cached console token this close to expiry is replaced rather than used.
REFRESH_MARGIN_S = 60.0
# How long a refresh waits for another process's refresh of the same credentials file.
LOCK_TIMEOUT_S = 60.0


class _TokenCache:
    """Console access tokens by (server, email); shared by the threads `run_sync` uses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            token, exp = self._tokens.get(key, ("", 0.0))
        return token if exp - time.time() > REFRESH_MARGIN_S else None

    def put(self, key: tuple[str, str], token: str) -> None:
        exp = unverified_expiry(token) or time.time() + REFRESH_MARGIN_S * 2
        with self._lock:
            self._tokens[key] = (token, exp)

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


token_cache = _TokenCache()
# Held (with the lock file) while a refresh token is used and the new one saved.
_thread_lock = threading.Lock()


def http_client(timeout: httpx.Timeout = API_TIMEOUT) -> httpx.AsyncClient:
    """One client per SDK call: every sync call runs on a fresh event loop."""
    return httpx.AsyncClient(timeout=timeout)


async def password_login(client: httpx.AsyncClient, url: str, email: str, password: str) -> str:
    """Trade email and password for a console access token."""
    return (await login_tokens(client, url, email, password))[0]


async def login_tokens(
    client: httpx.AsyncClient, url: str, email: str, password: str
) -> tuple[str, str | None]:
    """Trade email and password for (access token, refresh token or None)."""
    response = checked(
        await client.post(url + AUTH_PATH, json={"email": email, "password": password})
    )
    refresh = _optional_field(response, "refresh")
    return str(json_field(response, "access")), refresh


async def login_and_save(url: str, email: str, password: str) -> Path:
    """Log in and save ``{url, email, refresh_token}`` (mode 0600); never the password."""
    base = server_url(url)
    async with http_client() as client:
        access, refresh = await login_tokens(client, base, email, password)
    if not refresh:
        raise ApiError(
            200,
            "bad_response",
            f"{base}{AUTH_PATH} answered without a refresh token, so there is nothing to save "
            "that is not the password; upgrade the server, or set MODELHOST_EMAIL and "
            "MODELHOST_PASSWORD in the environment instead",
        )
    async with _credentials_lock():
        path = save_credentials(Credentials(base, email=email, refresh_token=refresh))
    token_cache.put((base, email), access)
    return path


async def logout_and_forget(url: str | None) -> tuple[str | None, bool]:
    """Revoke the saved login on the server and remove it from the credentials file.

    Returns (server URL or None if nothing was saved, whether the server confirmed the
    revocation). The entry is removed even when the server cannot be reached.
    """
    async with _credentials_lock():
        creds = remove_credentials(url)
    if creds is None:
        return (server_url(url) if url else None), False
    token_cache.drop(_cache_key(creds))
    if not creds.refresh_token:
        return creds.url, False
    try:
        async with http_client() as client:
            response = await client.post(
                creds.url + LOGOUT_PATH, json={"refresh": creds.refresh_token}
            )
    except httpx.HTTPError:
        return creds.url, False
    return creds.url, response.is_success and bool(_optional_field(response, "revoked"))


async def authorized_request(
    client: httpx.AsyncClient, creds: Credentials, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Send a console request with a bearer token; a non-2xx answer raises `ApiError`."""
    headers = dict(kwargs.pop("headers", None) or {})
    token, cached = await _console_token(client, creds)
    for retry in (False, True):
        headers["authorization"] = f"Bearer {token}"
        response = await client.request(method, creds.url + path, headers=headers, **kwargs)
        if response.status_code != 401 or not cached or retry:
            break
        token_cache.drop(_cache_key(creds))
        token, cached = await _console_token(client, creds)
    return checked(response)


async def _console_token(client: httpx.AsyncClient, creds: Credentials) -> tuple[str, bool]:
    """The bearer for `creds`, and whether it came from the cache."""
    if creds.access_token:
        return creds.access_token, False
    key = _cache_key(creds)
    cached = token_cache.get(key)
    if cached is not None:
        return cached, True
    if creds.refresh_token:
        token = await _refreshed_access(client, creds)
    else:
        assert creds.email and creds.password  # guaranteed by Credentials
        token = await password_login(client, creds.url, creds.email, creds.password)
    token_cache.put(key, token)
    return token, False


async def _refreshed_access(client: httpx.AsyncClient, creds: Credentials) -> str:
    """An access token for a saved refresh token; the rotated refresh token is saved."""
    key = _cache_key(creds)
    async with _credentials_lock():
        cached = token_cache.get(key)  # another task refreshed while this one waited
        if cached is not None:
            return cached
        refresh = saved_refresh_token(creds.url) or creds.refresh_token
        assert refresh
        response = await client.post(creds.url + REFRESH_PATH, json={"refresh": refresh})
        if response.status_code in (400, 401, 403):
            if creds.email and creds.password:
                return await password_login(client, creds.url, creds.email, creds.password)
            raise Unauthorized(
                f"the saved login for {creds.url} has expired or was revoked "
                f"({ApiError.from_response(response).message}); run "
                f"`modelhost login {creds.url}` again"
            )
        access = str(json_field(checked(response), "access"))
        rotated = _optional_field(response, "refresh")
        if rotated and rotated != refresh:  # the old one is dead now: keep the new one
            replace_refresh_token(creds.url, refresh, rotated)
        token_cache.put(key, access)
        return access


@contextlib.asynccontextmanager
async def _credentials_lock() -> AsyncIterator[None]:
    """Exclusive use of the credentials file across threads and processes.

    Waits without blocking the event loop (other tasks of the same loop may hold it).
    """
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while not _thread_lock.acquire(blocking=False):
        await _wait_or_fail(deadline)
    try:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        path = credentials_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await _wait_or_fail(deadline)
            yield
        finally:
            os.close(fd)  # releases the flock
    finally:
        _thread_lock.release()


async def _wait_or_fail(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise Unauthorized(
            f"the credentials file {credentials_path()} stayed locked for "
            f"{LOCK_TIMEOUT_S:.0f} s by another modelhost process; try again"
        )
    await asyncio.sleep(0.02)


def _cache_key(creds: Credentials) -> tuple[str, str]:
    return creds.url, creds.email or ""


def checked(response: httpx.Response) -> httpx.Response:
    """`response` itself when it is a success, else the server's error as `ApiError`."""
    if response.is_success:
        return response
    raise ApiError.from_response(response)


def _optional_field(response: httpx.Response, name: str) -> Any:
    try:
        return response.json().get(name)
    except (ValueError, AttributeError):
        return None


def json_field(response: httpx.Response, name: str) -> Any:
    """One field of a JSON answer; an answer without it is reported, not a KeyError."""
    try:
        return response.json()[name]
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            response.status_code,
            "bad_response",
            f"{response.request.url.path} answered without {name!r}; is this a modelhost "
            "server and is the URL right?",
        ) from None
