"""`modelhost login` saves a rotating refresh token, never the password; logout revokes it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from console_double import EMAIL, PASSWORD, ConsoleState
from typer.testing import CliRunner

from modelhost.cli import app
from modelhost.client import _console, aget_session_token, get_session_token, login
from modelhost.client.credentials import Credentials, credentials_path, save_credentials
from modelhost.errors import Unauthorized

MODEL_PATH = "/llm-models/llama/"


def _entries() -> list[dict[str, Any]]:
    return list(json.loads(credentials_path().read_text()))


def _saved_refresh() -> str:
    (entry,) = _entries()
    return str(entry["refresh_token"])


def test_login_saves_a_refresh_token_not_the_password(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    login(url + "/some/page/", EMAIL, PASSWORD)
    (entry,) = _entries()
    assert set(entry) == {"url", "email", "refresh_token"}
    assert entry["url"] == url and entry["email"] == EMAIL
    assert PASSWORD not in credentials_path().read_text()
    assert stat.S_IMODE(os.stat(credentials_path()).st_mode) == 0o600
    assert state.calls == ["auth"]


def test_sdk_refreshes_and_saves_the_rotated_refresh_token(
    console: tuple[str, ConsoleState],
) -> None:
    url, state = console
    login(url, EMAIL, PASSWORD)
    tokens = [_saved_refresh()]
    for _ in range(3):  # a new process each time: nothing cached in memory
        _console.token_cache.clear()
        assert get_session_token(url + MODEL_PATH)
        tokens.append(_saved_refresh())
    assert state.calls == ["auth"] + ["refresh", "model-auth"] * 3
    assert len(set(tokens)) == 4  # rotated every time, and each new one was saved
    assert state.refresh_seen == tokens[:3]  # each presented exactly once
    assert not state.revoked_families
    assert stat.S_IMODE(os.stat(credentials_path()).st_mode) == 0o600


def test_the_access_token_from_a_refresh_is_cached(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    login(url, EMAIL, PASSWORD)
    _console.token_cache.clear()
    get_session_token(url + MODEL_PATH)
    get_session_token(url + MODEL_PATH)
    assert state.calls == ["auth", "refresh", "model-auth", "model-auth"]


def test_concurrent_calls_refresh_once(console: tuple[str, ConsoleState]) -> None:
    """Presenting one refresh token twice would revoke the login: calls must take turns."""
    url, state = console
    login(url, EMAIL, PASSWORD)
    _console.token_cache.clear()

    async def many() -> list[str]:
        return list(await asyncio.gather(*(aget_session_token(url + MODEL_PATH) for _ in range(5))))

    assert len(asyncio.run(many())) == 5
    assert state.calls.count("refresh") == 1
    assert not state.revoked_families


def test_refresh_picks_up_a_token_rotated_by_another_process(
    console: tuple[str, ConsoleState],
) -> None:
    """The in-memory credentials are stale once another process refreshed: read the file."""
    url, state = console
    login(url, EMAIL, PASSWORD)
    from modelhost.client.credentials import load_credentials

    stale = load_credentials(url)
    _console.token_cache.clear()
    get_session_token(url + MODEL_PATH)  # "another process" rotates the saved token
    _console.token_cache.clear()

    async def with_stale() -> str:
        async with _console.http_client() as client:
            token, _ = await _console._console_token(client, stale)
        return token

    assert asyncio.run(with_stale())
    assert not state.revoked_families
    assert len(set(state.refresh_seen)) == len(state.refresh_seen) == 2


def test_server_without_rotation_keeps_the_refresh_token(
    console: tuple[str, ConsoleState],
) -> None:
    url, state = console
    state.rotate_refresh = False  # {"access"} only
    login(url, EMAIL, PASSWORD)
    saved = _saved_refresh()
    for _ in range(2):
        _console.token_cache.clear()
        assert get_session_token(url + MODEL_PATH)
    assert _saved_refresh() == saved
    assert state.calls.count("refresh") == 2


def test_revoked_login_says_log_in_again(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    login(url, EMAIL, PASSWORD)
    state.revoked_families.update(state.refresh_family.values())
    _console.token_cache.clear()
    with pytest.raises(Unauthorized, match=f"modelhost login {url}"):
        get_session_token(url + MODEL_PATH)
    assert "model-auth" not in state.calls


def test_revoked_cached_access_token_is_refreshed(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    login(url, EMAIL, PASSWORD)
    get_session_token(url + MODEL_PATH)
    state.revoked.add(state.bearers[-1])
    assert get_session_token(url + MODEL_PATH)
    assert state.calls == ["auth", "model-auth", "model-auth", "refresh", "model-auth"]


def test_logout_revokes_and_removes_the_entry(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    save_credentials(Credentials("http://other:8000", access_token="mh_other"))
    login(url, EMAIL, PASSWORD)
    refresh = _saved_refresh_for(url)

    server, revoked = asyncio.run(_console.logout_and_forget(None))  # the default entry

    assert (server, revoked) == (url, True)
    assert [e["url"] for e in _entries()] == ["http://other:8000"]
    assert state.calls == ["auth", "logout"]
    assert state.revoked_families == {state.refresh_family[_jti(state, refresh)]}
    with pytest.raises(Unauthorized, match="no credentials"):
        get_session_token(url + MODEL_PATH)


def test_logout_without_a_saved_login(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    assert asyncio.run(_console.logout_and_forget(url)) == (url, False)
    assert state.calls == []


def test_logout_removes_the_entry_even_if_the_server_is_gone(tmp_path: Path) -> None:
    save_credentials(Credentials("http://127.0.0.1:9", email=EMAIL, refresh_token="r"))
    assert asyncio.run(_console.logout_and_forget("http://127.0.0.1:9/x/")) == (
        "http://127.0.0.1:9",
        False,
    )
    assert _entries() == []


def test_saved_password_from_older_versions_still_works(
    console: tuple[str, ConsoleState],
) -> None:
    url, state = console
    save_credentials(Credentials(url, EMAIL, PASSWORD))
    assert get_session_token(url + MODEL_PATH)
    assert state.calls == ["auth", "model-auth"]


def test_cli_login_and_logout(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    runner = CliRunner()
    result = runner.invoke(app, ["login", url], input=f"{EMAIL}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "refresh token (not the password)" in result.output
    assert PASSWORD not in credentials_path().read_text()
    assert set(_entries()[0]) == {"url", "email", "refresh_token"}

    result = runner.invoke(app, ["logout", url])
    assert result.exit_code == 0, result.output
    assert "revoked on the server" in result.output
    assert _entries() == []
    assert state.calls == ["auth", "logout"]
    result = runner.invoke(app, ["logout"])
    assert result.exit_code == 1 and "no saved login" in result.output


def test_cli_login_with_wrong_password_saves_nothing(console: tuple[str, ConsoleState]) -> None:
    url, _ = console
    result = CliRunner().invoke(app, ["login", url, "--email", EMAIL, "--password", "nope"])
    assert result.exit_code != 0
    assert not credentials_path().exists()


def _saved_refresh_for(url: str) -> str:
    return str(next(e for e in _entries() if e["url"] == url)["refresh_token"])


def _jti(state: ConsoleState, token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_rotated_token_is_saved_in_place(tmp_path: Path) -> None:
    from modelhost.client.credentials import load_credentials, replace_refresh_token

    save_credentials(Credentials("http://a:1", email=EMAIL, refresh_token="r1"))
    save_credentials(Credentials("http://b:2", access_token="mh_b"))
    assert replace_refresh_token("http://a:1", "r1", "r2")
    assert [e["url"] for e in _entries()] == ["http://a:1", "http://b:2"]  # default unchanged
    assert load_credentials("http://a:1/m/").refresh_token == "r2"
    assert not replace_refresh_token("http://a:1", "r1", "r3")  # logged in anew meanwhile
    assert load_credentials("http://a:1/m/").refresh_token == "r2"
    assert "r2" not in repr(load_credentials("http://a:1/m/"))
