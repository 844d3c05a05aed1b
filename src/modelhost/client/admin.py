"""Admin calls for the CLI, with the saved credentials."""

from __future__ import annotations

from typing import Any

from modelhost.client import _console
from modelhost.client._sync import run_sync
from modelhost.client.credentials import load_credentials


async def aadmin_request(
    method: str, path: str, url: str | None, body: dict[str, Any] | None
) -> Any:
    creds = load_credentials(url)
    payload = {k: v for k, v in (body or {}).items() if v is not None}
    async with _console.http_client() as client:
        response = await _console.authorized_request(
            client, creds, method, path, json=payload if body is not None else None
        )
    if not response.content:  # e.g. 204 No Content after a DELETE
        return {"status": response.status_code}
    return response.json()


def admin_request(
    method: str, path: str, url: str | None, body: dict[str, Any] | None = None
) -> Any:
    return run_sync(aadmin_request(method, path, url, body))
