"""Signing-key keyring: random key ids, rotation with a grace period, reload, file mode."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from modelhost.auth.keyring import (
    LEGACY_KID,
    Keyring,
    load_or_create,
    parse_previous_keys,
    read_keyring,
    rotate,
    write_keyring,
)
from modelhost.auth.tokens import TokenService
from modelhost.errors import Unauthorized
from modelhost.settings import Settings

LEGACY_SECRET = "legacy-secret-" * 4
OTHER_SECRET = "other-secret-" * 4
DAY = 24 * 3600


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"MODELHOST_HOME": str(home), **env})


def _server(settings: Settings) -> TokenService:
    """The server's service, checking the key file on every issue / unknown kid."""
    service = TokenService.from_settings(settings)
    service._reload_interval_s = 0.0
    return service


def test_first_key_file_is_a_0600_keyring_with_a_random_kid(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ring = settings.load_jwt_keyring()
    data = json.loads(settings.jwt_key_path.read_text())
    assert data["current"] == ring.current != LEGACY_KID
    assert len(ring.current) == 8 and int(ring.current, 16) >= 0
    assert data["keys"] == {ring.current: ring.secret} and data["retired"] == {}
    assert _mode(settings.jwt_key_path) == 0o600
    assert settings.load_jwt_keyring() == ring  # made once
    assert settings.load_jwt_secret() == ring.secret
    assert _settings(tmp_path / "other").load_jwt_keyring().current != ring.current


def test_tokens_signed_before_rotation_still_verify(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    server = _server(settings)
    old_kid = server.current_kid
    old_access = server.issue_access(7)
    old_refresh = server.issue_refresh(7)
    old_session = server.issue_model_session(7, 1, "p", "m")

    done = rotate(settings.jwt_key_path, settings.refresh_token_ttl_s)

    assert done.previous_kid == old_kid and done.new_kid != old_kid
    new_access = server.issue_access(7)  # the running service reloads the changed file
    assert _kid(new_access) == done.new_kid == server.current_kid
    assert server.verify(old_access, "access").sub == 7
    assert server.verify(old_refresh, "refresh").sub == 7
    assert server.verify(old_session, "model").mid == 1
    assert server.verify(new_access, "access").sub == 7
    # a server started after the rotation accepts both as well
    restarted = TokenService.from_settings(settings)
    assert restarted.verify(old_access, "access").sub == 7
    assert _kid(restarted.issue_access(1)) == done.new_kid


def test_old_key_is_accepted_until_the_longest_token_ttl(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = settings.load_jwt_keyring().current
    now = time.time()
    done = rotate(settings.jwt_key_path, settings.refresh_token_ttl_s, now=now)
    assert done.ring.retired == {first: pytest.approx(now + 7 * DAY, abs=1)}
    assert set(done.ring.accepted(now + 7 * DAY - 10)) == {first, done.new_kid}
    assert set(done.ring.accepted(now + 7 * DAY + 10)) == {done.new_kid}


def test_a_verifier_started_before_rotation_learns_the_new_kid(tmp_path: Path) -> None:
    """Another server process (or this one before it issued anything) sees a new kid."""
    settings = _settings(tmp_path)
    verifier = _server(settings)
    signer = _server(settings)
    rotate(settings.jwt_key_path, DAY)
    token = signer.issue_access(3)
    assert _kid(token) != verifier.current_kid
    assert verifier.verify(token, "access").sub == 3  # unknown kid -> reload -> known


def test_gateways_with_their_own_homes_share_a_keyring_file(tmp_path: Path) -> None:
    """MODELHOST_JWT_KEY_FILE (several hosts, one mounted file): tokens one gateway signs
    verify on the other, and a rotation through the file reaches both."""
    shared = tmp_path / "secrets" / "modelhost-jwt.json"
    one = _settings(tmp_path / "one", MODELHOST_JWT_KEY_FILE=str(shared))
    two = _settings(tmp_path / "two", MODELHOST_JWT_KEY_FILE=str(shared))
    assert one.jwt_key_path == two.jwt_key_path == shared
    signer, verifier = _server(one), _server(two)
    assert verifier.verify(signer.issue_access(5), "access").sub == 5
    assert shared.exists() and _mode(shared) == 0o600
    assert not (tmp_path / "one" / "jwt.key").exists()
    assert not (tmp_path / "two" / "jwt.key").exists()
    before = signer.current_kid
    rotate(two.jwt_key_path, DAY)
    token = signer.issue_access(6)  # the signer reloads the file it watches
    assert _kid(token) != before
    assert verifier.verify(token, "access").sub == 6


def test_unknown_kid_is_refused(tmp_path: Path) -> None:
    server = _server(_settings(tmp_path))
    forged = TokenService(OTHER_SECRET, kid="deadbeef").issue_access(1)
    with pytest.raises(Unauthorized, match="unknown key id"):
        server.verify(forged, "access")
    # same kid as the server's but another secret: the signature check refuses it
    same_kid = TokenService(OTHER_SECRET, kid=server.current_kid).issue_access(1)
    with pytest.raises(Unauthorized, match="invalid signature"):
        server.verify(same_kid, "access")


def test_key_retired_past_its_deadline_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    server = _server(settings)
    old_token = server.issue_access(1)
    # rotated 8 days ago with the default 7-day grace: the deadline has passed, but the
    # key is still in the file (pruning happens on the next rotation)
    rotate(settings.jwt_key_path, 7 * DAY, now=time.time() - 8 * DAY)
    assert server.issue_access(1)  # reloads
    with pytest.raises(Unauthorized, match="rotated out"):
        server.verify(old_token, "access")
    with pytest.raises(Unauthorized, match="rotated out"):
        TokenService.from_settings(settings).verify(old_token, "access")


def test_rotation_prunes_expired_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwt.key"
    first = load_or_create(path).current
    now = time.time()
    second = rotate(path, 100, now=now).new_kid
    third = rotate(path, 100, now=now + 50)
    assert set(third.ring.keys) == {first, second, third.new_kid} and third.pruned == ()
    fourth = rotate(path, 100, now=now + 120)  # first's deadline (now + 100) has passed
    assert fourth.pruned == (first,)
    assert set(fourth.ring.keys) == {second, third.new_kid, fourth.new_kid}
    assert set(fourth.ring.retired) == {second, third.new_kid}
    assert read_keyring(path) == fourth.ring


def test_drop_old_removes_every_old_key(tmp_path: Path) -> None:
    path = tmp_path / "jwt.key"
    first = load_or_create(path).current
    second = rotate(path, DAY).new_kid
    done = rotate(path, 0, drop_old=True)
    assert set(done.pruned) == {first, second}
    assert dict(done.ring.keys) == {done.new_kid: done.ring.secret} and not done.ring.retired


def test_key_file_stays_0600_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "home" / "jwt.key"
    load_or_create(path)
    for _ in range(3):
        rotate(path, DAY)
        assert _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["jwt.key"]


def test_loose_key_file_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "jwt.key"
    load_or_create(path)
    path.chmod(0o644)
    read_keyring(path)
    assert _mode(path) == 0o600


def test_loose_key_file_that_cannot_be_tightened_is_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    """A key file whose mode cannot change (a read-only secret volume; here the immutable
    attribute, which refuses chmod to root as well) is refused with the fix, not used."""
    path = tmp_path / "jwt.key"
    load_or_create(path)
    path.chmod(0o644)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on ext4/xfs)")
    try:
        with pytest.raises(PermissionError, match=r"readable by other users.*defaultMode: 0400"):
            read_keyring(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert _mode(path) == 0o644


def test_plain_text_key_file_is_kid_k1_and_upgraded_on_rotation(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    fd = os.open(settings.jwt_key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(LEGACY_SECRET + "\n")
    # a token from before keyrings: kid k1, the plain secret
    legacy_token = TokenService(LEGACY_SECRET, kid="k1").issue_access(5)
    server = _server(settings)
    assert server.current_kid == LEGACY_KID
    assert server.verify(legacy_token, "access").sub == 5
    assert settings.jwt_key_path.read_text().strip() == LEGACY_SECRET  # untouched by reading

    done = rotate(settings.jwt_key_path, DAY)

    data = json.loads(settings.jwt_key_path.read_text())
    assert data["current"] == done.new_kid
    assert data["keys"][LEGACY_KID] == LEGACY_SECRET
    assert set(data["retired"]) == {LEGACY_KID}
    assert _mode(settings.jwt_key_path) == 0o600
    assert server.verify(legacy_token, "access").sub == 5
    assert _kid(server.issue_access(5)) == done.new_kid


def test_environment_secret_is_kid_env_plus_previous_keys(tmp_path: Path) -> None:
    env_secret = "env-secret-" * 4
    settings = _settings(
        tmp_path,
        MODELHOST_JWT_SECRET=env_secret,
        MODELHOST_JWT_PREVIOUS_KEYS=f"k1:{LEGACY_SECRET}, old2:{OTHER_SECRET}",
    )
    service = TokenService.from_settings(settings)
    assert service.current_kid == "env"
    assert not settings.jwt_key_path.exists()  # the file is not used
    assert jwt.decode(service.issue_access(1), env_secret, algorithms=["HS256"])["sub"] == "1"
    for kid, secret in (("k1", LEGACY_SECRET), ("old2", OTHER_SECRET)):
        token = TokenService(secret, kid=kid).issue_access(2)
        assert service.verify(token, "access").sub == 2
    # rotating an environment key: new kid and secret, the old one as a previous key
    rotated = TokenService.from_settings(
        _settings(
            tmp_path,
            MODELHOST_JWT_SECRET=OTHER_SECRET,
            MODELHOST_JWT_KID="env2",
            MODELHOST_JWT_PREVIOUS_KEYS=f"env:{env_secret}",
        )
    )
    assert rotated.verify(service.issue_access(4), "access").sub == 4
    assert _kid(rotated.issue_access(4)) == "env2"


def test_previous_keys_also_apply_to_the_key_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, MODELHOST_JWT_PREVIOUS_KEYS=f"env:{OTHER_SECRET}")
    server = _server(settings)
    token = TokenService(OTHER_SECRET, kid="env").issue_access(9)
    assert server.verify(token, "access").sub == 9
    rotate(settings.jwt_key_path, DAY)
    server.issue_access(1)  # reload keeps the configured previous keys
    assert server.verify(token, "access").sub == 9


def test_previous_keys_syntax_errors_are_explained() -> None:
    assert parse_previous_keys("") == {}
    assert parse_previous_keys("a:x,b:y:z") == {"a": "x", "b": "y:z"}
    for bad in ("justasecret", ":secret", "kid:"):
        with pytest.raises(ValueError, match="kid:secret"):
            parse_previous_keys(bad)


def test_previous_key_cannot_shadow_a_keyring_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    kid = settings.load_jwt_keyring().current
    bad = _settings(tmp_path, MODELHOST_JWT_PREVIOUS_KEYS=f"{kid}:{OTHER_SECRET}")
    with pytest.raises(ValueError, match="another secret"):
        TokenService.from_settings(bad)


def test_reload_is_checked_at_most_every_interval(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    service = TokenService.from_settings(settings)  # default interval: seconds
    first = service.current_kid
    rotate(settings.jwt_key_path, DAY)
    assert _kid(service.issue_access(1)) == first  # checked less than the interval ago
    assert service.reload_if_changed(force=True)
    assert service.current_kid != first
    assert not service.reload_if_changed(force=True)  # unchanged file: nothing to do


def test_broken_key_file_keeps_the_keys_in_use(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    server = _server(settings)
    token = server.issue_access(1)
    write_keyring(settings.jwt_key_path, Keyring("short", {"short": "x"}))
    assert not server.reload_if_changed(force=True)
    assert server.verify(token, "access").sub == 1
    settings.jwt_key_path.write_text("{not json")
    assert not server.reload_if_changed(force=True)
    assert server.verify(token, "access").sub == 1


def test_rotate_keys_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelhost.cli import app

    for name in ("MODELHOST_JWT_SECRET", "MODELHOST_HOME", "MODELHOST_JWT_PREVIOUS_KEYS"):
        monkeypatch.delenv(name, raising=False)
    settings = _settings(tmp_path)
    first = settings.load_jwt_keyring().current
    result = CliRunner().invoke(app, ["admin", "rotate-keys", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ring = read_keyring(settings.jwt_key_path)
    assert ring is not None and ring.current != first
    assert f"new signing key id: {ring.current}" in result.output
    assert f"key id {first}" in result.output and "reloads" in result.output
    assert ring.secret not in result.output
    assert _mode(settings.jwt_key_path) == 0o600


def test_rotate_keys_command_with_environment_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelhost.cli import app

    monkeypatch.setenv("MODELHOST_JWT_SECRET", OTHER_SECRET)
    result = CliRunner().invoke(app, ["admin", "rotate-keys", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "MODELHOST_JWT_PREVIOUS_KEYS" in result.output
    assert not (tmp_path / "jwt.key").exists()


def test_dropped_key_is_refused_without_a_new_issue(tmp_path: Path) -> None:
    """A token with an old kid makes the verifier check the file (a leaked key)."""
    settings = _settings(tmp_path)
    server = _server(settings)
    old_token = server.issue_access(1)
    rotate(settings.jwt_key_path, DAY)
    server.issue_access(1)  # reloads: the old key is retired, not dropped
    assert server.verify(old_token, "access").sub == 1
    generation = server.generation
    rotate(settings.jwt_key_path, 0, drop_old=True)
    with pytest.raises(Unauthorized, match="unknown key id"):
        server.verify(old_token, "access")
    assert server.generation == generation + 1
