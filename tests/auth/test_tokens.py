"""JWT issue/verify: only genuine, unexpired, HS256, right-purpose tokens pass."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from modelhost.auth import (
    Claims,
    TokenService,
    hash_opaque,
    new_opaque_token,
    unverified_expiry,
)
from modelhost.errors import Unauthorized

SECRET = "s" * 64  # long enough for HS512 too, so that test shows no key warning
OTHER_SECRET = "o" * 64


@pytest.fixture
def service() -> TokenService:
    return TokenService(SECRET, access_ttl_s=60, refresh_ttl_s=600, session_ttl_s=300)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _payload(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "7", "typ": "access", "iat": now, "exp": now + 60, "jti": "j1"}
    return {**base, **overrides}


def _rejected(service: TokenService, token: str, expected: str = "access") -> str:
    with pytest.raises(Unauthorized) as info:
        service.verify(token, expected)
    message = info.value.message
    assert not token or token not in message
    return message


def test_access_roundtrip(service: TokenService) -> None:
    claims = service.verify(service.issue_access(7), "access")
    assert claims.sub == 7
    assert claims.typ == "access"
    assert claims.mid is None and claims.pfx is None and claims.mdl is None
    assert 55 <= claims.exp - time.time() <= 61
    assert jwt.get_unverified_header(service.issue_access(7))["kid"] == "k1"


def test_refresh_roundtrip(service: TokenService) -> None:
    claims = service.verify(service.issue_refresh(3), "refresh")
    assert (claims.sub, claims.typ) == (3, "refresh")


def test_model_claims_roundtrip(service: TokenService) -> None:
    token = service.issue_model_session(5, 42, "llm-models", "llama-1b-basic-test")
    claims = service.verify(token, "model")
    assert claims == Claims(
        sub=5,
        typ="model",
        exp=claims.exp,
        jti=claims.jti,
        mid=42,
        pfx="llm-models",
        mdl="llama-1b-basic-test",
        iat=claims.iat,
    )
    assert 295 <= claims.exp - time.time() <= 301
    custom = service.verify(service.issue_model_session(5, 42, "p", "m", ttl_s=30), "model")
    assert custom.exp - time.time() <= 31


def test_jti_is_unique(service: TokenService) -> None:
    a = service.verify(service.issue_access(1), "access")
    b = service.verify(service.issue_access(1), "access")
    assert a.jti != b.jti


def test_tampered_signature(service: TokenService) -> None:
    head, body, sig = service.issue_access(7).split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert "invalid signature" in _rejected(service, f"{head}.{body}.{flipped}")


def test_tampered_payload(service: TokenService) -> None:
    head, _, sig = service.issue_access(7).split(".")
    forged = _b64(_payload(sub="1"))
    assert "invalid signature" in _rejected(service, f"{head}.{forged}.{sig}")


def test_other_key_same_kid(service: TokenService) -> None:
    token = jwt.encode(_payload(), OTHER_SECRET, algorithm="HS256", headers={"kid": "k1"})
    assert "invalid signature" in _rejected(service, token)


def test_alg_none_rejected(service: TokenService) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(_payload())}."
    message = _rejected(service, token)
    assert "'none'" in message and "HS256" in message


def test_hs512_with_same_key_rejected(service: TokenService) -> None:
    token = jwt.encode(_payload(), SECRET, algorithm="HS512", headers={"kid": "k1"})
    assert "only HS256" in _rejected(service, token)


def test_expired(service: TokenService) -> None:
    token = jwt.encode(
        _payload(typ="model", mid=1, pfx="p", mdl="m", exp=int(time.time()) - 5),
        SECRET,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    message = _rejected(service, token, "model")
    assert message == "session token expired; get a new one with get_session_token()"


def test_wrong_typ(service: TokenService) -> None:
    refresh = service.issue_refresh(7)
    assert "expected a console access token but got a refresh token" in _rejected(service, refresh)
    access = service.issue_access(7)
    assert "get_session_token()" in _rejected(service, access, "model")
    session = service.issue_model_session(7, 1, "p", "m")
    _rejected(service, session, "access")


@pytest.mark.parametrize("claim", ["sub", "exp", "jti", "typ", "iat"])
def test_missing_claim(service: TokenService, claim: str) -> None:
    payload = _payload()
    del payload[claim]
    token = jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})
    assert claim in _rejected(service, token)


def test_model_token_missing_model_claims(service: TokenService) -> None:
    token = jwt.encode(
        _payload(typ="model", mid=1), SECRET, algorithm="HS256", headers={"kid": "k1"}
    )
    message = _rejected(service, token, "model")
    assert "pfx" in message and "mdl" in message


def test_non_numeric_sub(service: TokenService) -> None:
    token = jwt.encode(_payload(sub="admin"), SECRET, algorithm="HS256", headers={"kid": "k1"})
    assert "malformed" in _rejected(service, token)


def test_garbage(service: TokenService) -> None:
    assert "malformed" in _rejected(service, "not.a.jwt")
    assert "malformed" in _rejected(service, "")


def test_unknown_or_missing_kid(service: TokenService) -> None:
    for headers in ({"kid": "k9"}, {}):
        token = jwt.encode(_payload(), SECRET, algorithm="HS256", headers=headers)
        assert "unknown key id" in _rejected(service, token)


def test_key_rotation() -> None:
    old = TokenService(SECRET, kid="k1")
    new = TokenService(OTHER_SECRET, kid="k2", previous_keys={"k1": SECRET})
    assert new.verify(old.issue_access(1), "access").sub == 1
    assert jwt.get_unverified_header(new.issue_access(1))["kid"] == "k2"
    with pytest.raises(Unauthorized):
        old.verify(new.issue_access(1), "access")


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        TokenService("short")


def test_bad_expected_and_ttl(service: TokenService) -> None:
    with pytest.raises(ValueError):
        service.verify(service.issue_access(1), "admin")
    with pytest.raises(ValueError):
        service.issue_model_session(1, 1, "p", "m", ttl_s=0)


def test_opaque_tokens() -> None:
    token = new_opaque_token()
    assert token.startswith("mh_") and len(token) > 40
    assert new_opaque_token() != token
    digest = hash_opaque(token)
    assert len(digest) == 64 and digest == hash_opaque(token)
    assert token not in digest


def test_unverified_expiry(service: TokenService) -> None:
    exp = unverified_expiry(service.issue_access(1))
    assert exp is not None and abs(exp - (time.time() + 60)) < 2
    assert unverified_expiry("mh_opaque") is None
    assert unverified_expiry(jwt.encode({"sub": "1"}, SECRET, algorithm="HS256")) is None
    expired = jwt.encode({"exp": 1}, OTHER_SECRET, algorithm="HS256")
    assert unverified_expiry(expired) == 1.0
