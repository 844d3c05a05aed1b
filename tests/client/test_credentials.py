"""Credential lookup: environment first, then the 0600 file keyed by server URL."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from modelhost.client.credentials import (
    Credentials,
    credentials_path,
    load_credentials,
    save_credentials,
    server_url,
)
from modelhost.errors import Unauthorized

MODEL = "https://ml.example.com:8443/llm-models/llama/"
SERVER = "https://ml.example.com:8443"


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"MODELHOST_CONFIG_DIR": str(tmp_path), **values}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_server_url_from_model_url() -> None:
    assert server_url(MODEL) == SERVER
    assert server_url("http://LOCALHOST:8000/a/b/v3/?get_meta=true") == "http://localhost:8000"
    with pytest.raises(ValueError, match="not an http"):
        server_url("ml.example.com/llm-models/llama/")


def test_file_entry_for_the_model_server(tmp_path: Path) -> None:
    env = _env(tmp_path)
    save_credentials(Credentials(SERVER, "a@x.io", "pw-a"), env)
    save_credentials(Credentials("http://other:8000", "b@x.io", "pw-b"), env)
    creds = load_credentials(MODEL, env)
    assert (creds.url, creds.email, creds.password) == (SERVER, "a@x.io", "pw-a")
    assert load_credentials("http://other:8000/p/m/", env).email == "b@x.io"


def test_last_saved_is_the_default_without_url(tmp_path: Path) -> None:
    env = _env(tmp_path)
    save_credentials(Credentials(SERVER, "a@x.io", "pw-a"), env)
    save_credentials(Credentials("http://other:8000", "b@x.io", "pw-b"), env)
    save_credentials(Credentials(SERVER, "c@x.io", "pw-c"), env)  # replaces, moves to end
    assert load_credentials(None, env).email == "c@x.io"
    entries = json.loads(credentials_path(env).read_text())
    assert [e["url"] for e in entries] == ["http://other:8000", SERVER]


def test_environment_wins_over_file(tmp_path: Path) -> None:
    env = _env(tmp_path, MODELHOST_EMAIL="env@x.io", MODELHOST_PASSWORD="env-pw")
    save_credentials(Credentials(SERVER, "file@x.io", "file-pw"), env)
    creds = load_credentials(MODEL, env)
    assert (creds.email, creds.password, creds.url) == ("env@x.io", "env-pw", SERVER)


def test_environment_url_wins_over_model_url(tmp_path: Path) -> None:
    env = _env(tmp_path, MODELHOST_URL="http://internal:8000/", MODELHOST_ACCESS_TOKEN="mh_t")
    creds = load_credentials(MODEL, env)
    assert (creds.url, creds.access_token, creds.email) == ("http://internal:8000", "mh_t", None)


def test_half_set_environment_falls_back_to_file(tmp_path: Path) -> None:
    env = _env(tmp_path, MODELHOST_EMAIL="env@x.io")
    save_credentials(Credentials(SERVER, "file@x.io", "file-pw"), env)
    assert load_credentials(MODEL, env).email == "file@x.io"


def test_environment_credentials_need_a_server(tmp_path: Path) -> None:
    env = _env(tmp_path, MODELHOST_ACCESS_TOKEN="mh_t")
    with pytest.raises(Unauthorized, match="MODELHOST_URL"):
        load_credentials(None, env)


def test_missing_credentials_explain_the_fix(tmp_path: Path) -> None:
    with pytest.raises(Unauthorized) as info:
        load_credentials(MODEL, _env(tmp_path))
    assert f"modelhost login {SERVER}" in info.value.message
    assert "MODELHOST_EMAIL" in info.value.message
    assert "MODELHOST_ACCESS_TOKEN" in info.value.message


def test_file_is_created_0600_and_secret_not_in_repr(tmp_path: Path) -> None:
    env = _env(tmp_path / "new-dir")
    creds = Credentials(SERVER, access_token="mh_secret")
    path = save_credentials(creds, env)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert "mh_secret" not in repr(creds)
    assert not list(path.parent.glob(".*tmp"))


def test_loose_permissions_are_fixed_with_a_warning(tmp_path: Path) -> None:
    env = _env(tmp_path)
    path = save_credentials(Credentials(SERVER, "a@x.io", "pw"), env)
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        assert load_credentials(MODEL, env).email == "a@x.io"
    assert _mode(path) == 0o600


def test_corrupt_file_says_what_to_do(tmp_path: Path) -> None:
    path = credentials_path(_env(tmp_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(Unauthorized, match="modelhost login"):
        load_credentials(MODEL, _env(tmp_path))


def test_credentials_need_a_secret() -> None:
    with pytest.raises(ValueError):
        Credentials(SERVER, email="a@x.io")


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert credentials_path({}) == tmp_path / ".modelhost-client" / "credentials.json"
