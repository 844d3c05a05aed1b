"""get_session_token: reuse of fresh tokens, console token caching, errors."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import jwt
import pytest
from console_double import ACCESS_TOKEN, EMAIL, PASSWORD, SECRET, ConsoleState

from modelhost.client import ApiError, aget_session_token, get_session_token, login
from modelhost.client.credentials import credentials_path
from modelhost.errors import Unauthorized

MODEL_PATH = "/llm-models/llama/"


def _jwt_with(seconds_left: float) -> str:
    exp = int(time.time() + seconds_left)
    return jwt.encode({"sub": "1", "typ": "model", "exp": exp}, "k" * 32, algorithm="HS256")


def test_token_with_10_minutes_left_is_returned_unchanged() -> None:
    # No credentials and no server: any attempt to fetch would raise.
    token = _jwt_with(600)
    assert get_session_token("http://127.0.0.1:9/llm-models/llama/", token=token) is token


def test_token_with_2_minutes_left_is_replaced(
    console: tuple[str, ConsoleState], logged_in_env: str
) -> None:
    url, state = console
    old = _jwt_with(120)
    new = get_session_token(url + MODEL_PATH, token=old)
    assert new != old
    claims = jwt.decode(new, SECRET, algorithms=["HS256"])
    assert claims["typ"] == "model" and claims["mid"] == 9
    assert state.calls == ["auth", "model-auth"]
    assert state.model_urls == [
        {"json": {"model_url": url + MODEL_PATH}, "query": {"model_url": url + MODEL_PATH}}
    ]


@pytest.mark.parametrize("stale", [None, "", "mh_not_a_jwt", "a.b.c"])
def test_missing_or_unreadable_token_is_replaced(
    console: tuple[str, ConsoleState], logged_in_env: str, stale: str | None
) -> None:
    url, _ = console
    assert get_session_token(url + MODEL_PATH, token=stale).count(".") == 2


def test_console_token_is_cached_per_server(
    console: tuple[str, ConsoleState], logged_in_env: str
) -> None:
    url, state = console
    first = get_session_token(url + MODEL_PATH)
    second = get_session_token(url + "/other/model/")
    assert first and second
    assert state.calls == ["auth", "model-auth", "model-auth"]
    assert state.bearers[0] == state.bearers[1]


def test_console_token_near_expiry_is_not_reused(
    console: tuple[str, ConsoleState], logged_in_env: str
) -> None:
    url, state = console
    state.access_ttl_s = 30  # under the SDK's refresh margin
    get_session_token(url + MODEL_PATH)
    get_session_token(url + MODEL_PATH)
    assert state.calls.count("auth") == 2


def test_revoked_cached_console_token_logs_in_again(
    console: tuple[str, ConsoleState], logged_in_env: str
) -> None:
    url, state = console
    get_session_token(url + MODEL_PATH)
    state.revoked.add(state.bearers[-1])
    assert get_session_token(url + MODEL_PATH)
    assert state.calls == ["auth", "model-auth", "model-auth", "auth", "model-auth"]


def test_long_lived_access_token_is_the_bearer(
    console: tuple[str, ConsoleState], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = console
    monkeypatch.setenv("MODELHOST_ACCESS_TOKEN", ACCESS_TOKEN)
    assert get_session_token(url + MODEL_PATH)
    assert state.calls == ["model-auth"]
    assert state.bearers == [ACCESS_TOKEN]


def test_wrong_password_shows_the_server_message(
    console: tuple[str, ConsoleState], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = console
    monkeypatch.setenv("MODELHOST_EMAIL", EMAIL)
    monkeypatch.setenv("MODELHOST_PASSWORD", "wrong")
    with pytest.raises(ApiError) as info:
        get_session_token(url + MODEL_PATH)
    assert info.value.status == 401 and info.value.type == "unauthorized"
    assert "wrong email or password" in str(info.value)


def test_no_credentials_says_how_to_log_in(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    with pytest.raises(Unauthorized, match=f"modelhost login {url}"):
        get_session_token(url + MODEL_PATH)
    assert state.calls == []


def test_login_saves_credentials_for_later_calls(console: tuple[str, ConsoleState]) -> None:
    url, state = console
    login(url + "/", EMAIL, PASSWORD)
    path = credentials_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert get_session_token(url + MODEL_PATH)
    assert state.calls == ["auth", "model-auth"]  # login's token was cached


def test_login_with_wrong_password_saves_nothing(console: tuple[str, ConsoleState]) -> None:
    url, _ = console
    with pytest.raises(ApiError, match="wrong email or password"):
        login(url, EMAIL, "nope")
    assert not credentials_path().exists()


def test_sync_call_inside_a_running_loop(
    console: tuple[str, ConsoleState], logged_in_env: str
) -> None:
    """As in Jupyter: the sync function is called while an event loop is running."""
    url, _ = console

    async def notebook_cell() -> str:
        return get_session_token(url + MODEL_PATH)

    assert asyncio.run(notebook_cell()).count(".") == 2


def test_async_api(console: tuple[str, ConsoleState], logged_in_env: str) -> None:
    url, state = console

    async def many() -> list[str]:
        return list(await asyncio.gather(*(aget_session_token(url + MODEL_PATH) for _ in range(3))))

    assert len(asyncio.run(many())) == 3
    assert state.calls.count("model-auth") == 3
