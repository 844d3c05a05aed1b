"""HTTP calls to the console API with a console access token.

Logging in costs an argon2 check on the server, so the access token is cached in memory
per server and user until shortly before it expires; if the server still refuses a cached
token (revoked, server restarted with a new key) the SDK logs in once more and retries.
A long-lived access token (``MODELHOST_ACCESS_TOKEN``) is used as the bearer directly.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from modelhost.auth.tokens import unverified_expiry
from modelhost.client.credentials import Credentials
from modelhost.client.errors import ApiError

AUTH_PATH = "/console/api/auth/"
MODEL_AUTH_PATH = "/console/api/modelhost/model-auth/"
DEPLOY_PATH = "/console/api/modelhost/deploy/"

API_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEPLOY_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# A cached console token this close to expiry is replaced rather than used.
REFRESH_MARGIN_S = 60.0


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


def http_client(timeout: httpx.Timeout = API_TIMEOUT) -> httpx.AsyncClient:
    """One client per SDK call: every sync call runs on a fresh event loop."""
    return httpx.AsyncClient(timeout=timeout)


async def password_login(client: httpx.AsyncClient, url: str, email: str, password: str) -> str:
    """Trade email and password for a console access token."""
    response = checked(
        await client.post(url + AUTH_PATH, json={"email": email, "password": password})
    )
    return str(json_field(response, "access"))


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
    assert creds.email and creds.password  # guaranteed by Credentials
    token = await password_login(client, creds.url, creds.email, creds.password)
    token_cache.put(key, token)
    return token, False


def _cache_key(creds: Credentials) -> tuple[str, str]:
    return creds.url, creds.email or ""


def checked(response: httpx.Response) -> httpx.Response:
    """`response` itself when it is a success, else the server's error as `ApiError`."""
    if response.is_success:
        return response
    raise ApiError.from_response(response)


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
