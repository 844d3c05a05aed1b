"""Against a real server: the generated admin password file, signing-key rotation with
`modelhost admin rotate-keys`, and the CLI's login / admin / logout commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from .harness import ADMIN_EMAIL, ADMIN_PASSWORD, Server, free_port

AUTH = "/console/api/auth/"
PREFIXES = "/console/api/modelhost/prefixes/"


def _cli(*args: str, config_dir: Path | None = None, check: bool = True) -> Any:
    """`python -m modelhost.cli ARGS` with no MODELHOST_* from the developer's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELHOST_")}
    if config_dir is not None:
        env["MODELHOST_CONFIG_DIR"] = str(config_dir)
    result = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def _json(result: Any) -> Any:
    return json.loads(result.stdout)


def _login(url: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> dict[str, str]:
    r = httpx.post(url + AUTH, json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "home", free_port(), {"MODELHOST_ADMIN_PASSWORD": ""}).start()
    yield srv
    srv.stop()


def test_generated_admin_password_is_in_a_0600_file_not_the_log(fresh_server: Server) -> None:
    path = fresh_server.home / "admin-password.txt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16
    log = fresh_server.log()
    assert password not in log
    assert str(path) in log and ADMIN_EMAIL in log
    assert "password:" not in log.lower()
    assert _login(fresh_server.url, ADMIN_EMAIL, password)["access"]


def test_rotate_keys_keeps_old_tokens_working(tmp_path: Path) -> None:
    srv = Server(tmp_path / "home", free_port()).start()
    try:
        old = _login(srv.url)
        old_kid = _kid(old["access"])
        key_file = srv.home / "jwt.key"
        assert json.loads(key_file.read_text())["current"] == old_kid

        out = _cli("admin", "rotate-keys", "--home", str(srv.home)).stdout
        new_kid = json.loads(key_file.read_text())["current"]
        assert new_kid != old_kid and f"new signing key id: {new_kid}" in out
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

        # the access token signed with the old key still works
        bearer = {"authorization": f"Bearer {old['access']}"}
        r = httpx.get(srv.url + PREFIXES, headers=bearer)
        assert r.status_code == 200, r.text
        # the running server switches to the new key within its reload interval
        deadline = time.monotonic() + 15
        while _kid(fresh := _login(srv.url)["access"]) == old_kid:
            assert time.monotonic() < deadline, "the server did not pick up the new key"
            time.sleep(0.5)
        assert _kid(fresh) == new_kid
        r = httpx.get(srv.url + PREFIXES, headers={"authorization": f"Bearer {fresh}"})
        assert r.status_code == 200, r.text
        # a refresh token from before the rotation still refreshes
        r = httpx.post(srv.url + AUTH + "refresh/", json={"refresh": old["refresh"]})
        assert r.status_code == 200, r.text
        assert _kid(r.json()["access"]) == new_kid
        assert "reloaded signing keys" in srv.log()
    finally:
        srv.stop()


def test_cli_login_admin_commands_and_logout(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "client"
    url = server.url

    def cli(*args: str, check: bool = True) -> Any:
        return _cli(*args, config_dir=config, check=check)

    out = cli("login", url, "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD).stdout
    assert "refresh token (not the password)" in out
    creds_file = config / "credentials.json"
    (entry,) = json.loads(creds_file.read_text())
    assert set(entry) == {"url", "email", "refresh_token"}
    assert ADMIN_PASSWORD not in creds_file.read_text()
    assert stat.S_IMODE(os.stat(creds_file).st_mode) == 0o600
    first_refresh = entry["refresh_token"]

    # every command below is a new process: each refreshes and saves the rotated token
    cli("admin", "user-create", "bob@example.com", "--password", "bob-password-1")
    users = _json(cli("admin", "user-list"))
    assert {"bob@example.com", ADMIN_EMAIL} <= {u["email"] for u in users}
    bob = next(u for u in users if u["email"] == "bob@example.com")
    assert bob["is_admin"] is False and bob["is_active"] is True
    (entry,) = json.loads(creds_file.read_text())
    assert entry["refresh_token"] != first_refresh
    refused = httpx.post(url + AUTH + "refresh/", json={"refresh": first_refresh})
    assert refused.status_code == 401  # used once already (and now the family is revoked)
    cli("login", url, "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)

    cli("admin", "prefix-create", "cli-team-models")
    group = _json(cli("admin", "group-create", "cli-data-science"))
    assert group["name"] == "cli-data-science" and isinstance(group["id"], int)
    added = _json(cli("admin", "group-add", "cli-data-science", "bob@example.com"))
    assert added == {"group_id": group["id"], "user_id": bob["id"]}
    groups = _json(cli("admin", "group-list"))
    assert {"id": group["id"], "name": "cli-data-science", "members": ["bob@example.com"]} in groups

    grant = _json(
        cli(
            "admin",
            "grant-create",
            "--group",
            "cli-data-science",
            "--prefix",
            "cli-team-models",
            "--permission",
            "use",
        )
    )
    assert isinstance(grant["id"], int)
    assert grant["id"] in [g["id"] for g in _json(cli("admin", "grant-list"))]
    user_grant = _json(
        cli(
            "admin",
            "grant-create",
            "--user",
            "bob@example.com",
            "--prefix",
            "cli-team-models",
            "--permission",
            "deploy",
        )
    )
    cli("admin", "grant-revoke", str(grant["id"]))
    remaining = [g["id"] for g in _json(cli("admin", "grant-list"))]
    assert grant["id"] not in remaining and user_grant["id"] in remaining
    cli("admin", "group-remove", "cli-data-science", "bob@example.com")
    groups = _json(cli("admin", "group-list"))
    assert next(g for g in groups if g["id"] == group["id"])["members"] == []

    audit = _json(cli("admin", "audit", "--limit", "30"))
    assert len(audit) <= 30
    assert {"id", "ts", "actor", "action", "detail"} <= set(audit[0])
    actions = {e["action"] for e in audit}
    assert {"group.create", "group.add", "grant.create", "grant.delete"} <= actions

    # usage errors are reported before any request
    both = cli("admin", "grant-create", "--group", "g", "--user", "u", "--prefix", "p",
               "--permission", "use", check=False)  # fmt: skip
    assert both.returncode == 2 and "exactly one of --group" in both.stderr
    bad = cli("admin", "grant-create", "--group", "g", "--prefix", "p", "--permission", "own",
              check=False)  # fmt: skip
    assert bad.returncode == 2
    missing = cli("admin", "group-add", "no-such-group", "bob@example.com", check=False)
    assert missing.returncode == 2 and "no group named" in missing.stderr

    (entry,) = json.loads(creds_file.read_text())
    out = cli("logout").stdout
    assert f"logged out of {url}" in out and "revoked on the server" in out
    assert json.loads(creds_file.read_text()) == []
    r = httpx.post(url + AUTH + "refresh/", json={"refresh": entry["refresh_token"]})
    assert r.status_code == 401
    after = cli("admin", "user-list", check=False)
    assert after.returncode == 1 and "modelhost login" in after.stderr
