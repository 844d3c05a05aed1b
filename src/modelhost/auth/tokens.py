"""JWT issue and verification for console and model-session tokens, plus opaque tokens.

Why it looks like this:
- The algorithm is pinned to HS256 at verification time and the header is checked before
  decoding, so ``alg: none`` and algorithm-confusion tokens are refused with a clear reason.
- Every token carries a ``kid`` header; `TokenService` signs with the current key and still
  accepts `previous_keys`, so the secret can be rotated without logging everybody out. The
  server builds it from the keyring file (`modelhost.auth.keyring`, ``modelhost admin
  rotate-keys``); when a token names a key id other than the current one, or when it
  issues a token, it checks (at most every `RELOAD_INTERVAL_S`, one ``stat``) whether the
  file changed and reloads it, so a rotation reaches a running server without a restart.
  Keys retired by a rotation are refused once their deadline has passed.
- ``typ`` separates console access, refresh and model-session tokens: a token minted for one
  purpose is never accepted for another.
- Failures raise `modelhost.errors.Unauthorized` with a message that says what is wrong and
  what to do next; the token itself never appears in a message (it would end up in logs).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jwt

from modelhost.auth.keyring import Keyring, parse_previous_keys, read_keyring
from modelhost.errors import Unauthorized

if TYPE_CHECKING:
    from modelhost.settings import Settings

log = logging.getLogger("modelhost.auth")

TokenType = Literal["access", "refresh", "model"]

ALGORITHM = "HS256"
OPAQUE_PREFIX = "mh_"
# HMAC-SHA256 keys shorter than the hash output weaken the signature (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
# A changed key file is noticed within this many seconds (checked on issue and on unknown kid).
RELOAD_INTERVAL_S = 2.0

_REQUIRED = ["sub", "typ", "exp", "iat", "jti"]
_MODEL_CLAIMS = ("mid", "pfx", "mdl")
_LABEL: dict[str, str] = {"access": "console access", "refresh": "refresh", "model": "session"}
_REMEDY: dict[str, str] = {
    "access": "log in again (POST /console/api/auth/) or refresh it "
    "(POST /console/api/auth/refresh/)",
    "refresh": "log in again (POST /console/api/auth/)",
    "model": "get a new one with get_session_token()",
}


@dataclass(frozen=True)
class Claims:
    """The verified content of a token; `mid`/`pfx`/`mdl` are set only on model sessions."""

    sub: int
    typ: TokenType
    exp: float
    jti: str
    mid: int | None = None
    pfx: str | None = None
    mdl: str | None = None
    iat: float = 0.0
    # Model sessions: what they were minted with, so revoking that revokes them too.
    atk: int | None = None  # id of the long-lived access token
    pjt: str | None = None  # the login family (or jti) of the console access token
    fam: str | None = None  # console access tokens: the login (refresh-token family) they belong to


@dataclass(frozen=True)
class _Keys:
    """The signing state, swapped as one object when the key file is reloaded."""

    kid: str
    secret: str
    accepted: Mapping[str, str]
    retired: Mapping[str, float]


class TokenService:
    """Issues and verifies modelhost JWTs with one current signing key."""

    def __init__(
        self,
        secret: str,
        access_ttl_s: float = 3600,
        refresh_ttl_s: float = 7 * 24 * 3600,
        session_ttl_s: float = 4 * 3600,
        kid: str = "k1",
        *,
        previous_keys: Mapping[str, str] | None = None,
        retired: Mapping[str, float] | None = None,
        key_file: Path | None = None,
        reload_interval_s: float = RELOAD_INTERVAL_S,
    ) -> None:
        """`retired`: kid -> epoch after which tokens with that kid are refused.

        `key_file`: the keyring file these keys came from; it is reloaded when it changes,
        and `previous_keys` are added to what it holds.
        """
        self._previous = dict(previous_keys or {})
        self._keys = _checked_keys(kid, {**self._previous, kid: secret}, retired or {})
        self._key_file = key_file
        self._reload_interval_s = reload_interval_s
        self._checked_at = time.monotonic()
        self._stamp = _file_stamp(key_file) if key_file is not None else None
        # Bumped on every reload: caches of verified tokens can compare it and start over
        # (a `rotate-keys --drop-old` must also end tokens already verified).
        self.generation = 0
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.session_ttl_s = session_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        """The service the server uses: keys from `Settings.load_jwt_keyring`, TTLs from env.

        With ``MODELHOST_JWT_SECRET`` set the key comes from the environment and no file is
        watched; otherwise the keyring file is, so ``modelhost admin rotate-keys`` reaches
        the running server.
        """
        key_file = None if settings.jwt_secret else settings.jwt_key_path
        stamp = _file_stamp(key_file) if key_file is not None else None
        ring = settings.load_jwt_keyring()
        service = cls.from_keyring(
            ring,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            session_ttl_s=settings.session_token_ttl_s,
            previous_keys=parse_previous_keys(settings.jwt_previous_keys),
            key_file=key_file,
        )
        if stamp is not None:  # read before loading: a rotation in between is not missed
            service._stamp = stamp
        return service

    @classmethod
    def from_keyring(
        cls,
        ring: Keyring,
        access_ttl_s: float = 3600,
        refresh_ttl_s: float = 7 * 24 * 3600,
        session_ttl_s: float = 4 * 3600,
        *,
        previous_keys: Mapping[str, str] | None = None,
        key_file: Path | None = None,
    ) -> TokenService:
        """A service signing with the keyring's current key and accepting the others.

        `previous_keys` (``MODELHOST_JWT_PREVIOUS_KEYS``) are accepted too, also after the
        keyring file is reloaded.
        """
        extra = dict(previous_keys or {})
        full = ring.with_previous(extra)
        service = cls(
            full.secret,
            access_ttl_s,
            refresh_ttl_s,
            session_ttl_s,
            kid=full.current,
            previous_keys={k: v for k, v in full.keys.items() if k != full.current},
            retired=full.retired,
            key_file=key_file,
        )
        service._previous = extra  # what a reload adds to the file's keys
        return service

    @property
    def current_kid(self) -> str:
        """The key id new tokens carry."""
        return self._keys.kid

    def reload_if_changed(self, force: bool = False) -> bool:
        """Reload the key file if it changed; checked at most every `reload_interval_s`.

        Returns whether new keys are in use. A key file that cannot be read or is invalid is
        logged and the keys in use are kept.
        """
        path = self._key_file
        if path is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked_at < self._reload_interval_s:
            return False
        self._checked_at = now
        stamp = _file_stamp(path)
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            ring = read_keyring(path)
            if ring is None:
                return False
            ring = ring.with_previous(self._previous)
            keys = _checked_keys(ring.current, ring.keys, ring.retired)
        except (OSError, ValueError) as exc:
            log.error("kept the signing keys in use: cannot reload %s: %s", path, exc)
            return False
        if keys == self._keys:
            return False
        self._keys = keys
        self.generation += 1
        log.info("reloaded signing keys from %s; new tokens use key id %s", path, keys.kid)
        return True

    def issue_access(self, user_id: int, *, family: str | None = None) -> str:
        """A short-lived console token (bearer for the console API).

        ``family`` names the login (its refresh-token family): revoking the family id revokes
        every access token of that login and the sessions minted with them.
        """
        return self._issue(user_id, "access", self.access_ttl_s, {"fam": family} if family else {})

    def issue_refresh(self, user_id: int) -> str:
        """A longer-lived token that can only be traded for a new access token."""
        return self._issue(user_id, "refresh", self.refresh_ttl_s, {})

    def issue_model_session(
        self,
        user_id: int,
        model_id: int,
        prefix: str,
        model_name: str,
        ttl_s: float | None = None,
        *,
        parent_token_id: int | None = None,
        parent_jti: str | None = None,
    ) -> str:
        """A session token scoped to one model, presented on prediction requests.

        ``parent_token_id`` / ``parent_jti`` name what it was minted with (a long-lived access
        token or a console access token): revoking the parent revokes the session.
        """
        ttl = self.session_ttl_s if ttl_s is None else ttl_s
        extra: dict[str, Any] = {"mid": model_id, "pfx": prefix, "mdl": model_name}
        if parent_token_id is not None:
            extra["atk"] = parent_token_id
        if parent_jti is not None:
            extra["pjt"] = parent_jti
        return self._issue(user_id, "model", ttl, extra)

    def _issue(self, user_id: int, typ: TokenType, ttl_s: float, extra: dict[str, Any]) -> str:
        if ttl_s <= 0:
            raise ValueError(f"token lifetime must be positive, got {ttl_s}")
        self.reload_if_changed()
        keys = self._keys
        now = int(time.time())
        payload = {
            "sub": str(user_id),
            "typ": typ,
            "iat": now,
            "exp": now + int(ttl_s),
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return jwt.encode(payload, keys.secret, algorithm=ALGORITHM, headers={"kid": keys.kid})

    def verify(self, token: str, expected: str) -> Claims:
        """Check signature, expiry and purpose; raise `Unauthorized` saying what to do."""
        if expected not in _LABEL:
            raise ValueError(f"expected must be one of {sorted(_LABEL)}, got {expected!r}")
        label, remedy = _LABEL[expected], _REMEDY[expected]
        key = self._key_for(token, label, remedy)
        payload = _decode(token, key, label, remedy)
        typ = payload.get("typ")
        if typ != expected:
            got = _LABEL.get(str(typ), "unknown")
            raise Unauthorized(f"expected a {label} token but got a {got} token; {remedy}")
        return _to_claims(payload, label, remedy)

    def _key_for(self, token: str, label: str, remedy: str) -> str:
        """Pick the key by `kid` after refusing any algorithm but HS256."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized(f"{label} token is malformed (not a JWT); {remedy}") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            shown = str(alg)[:16]
            raise Unauthorized(
                f"{label} token uses algorithm {shown!r}; only {ALGORITHM} is accepted; {remedy}"
            )
        kid = str(header.get("kid"))
        if kid != self._keys.kid:  # an old or unknown key: has the key file changed?
            self.reload_if_changed()
        key = self._keys.accepted.get(kid)
        if key is None:
            raise Unauthorized(
                f"{label} token was signed with an unknown key id (the server key may have "
                f"been rotated); {remedy}"
            )
        deadline = self._keys.retired.get(kid)
        if deadline is not None and deadline <= time.time():
            raise Unauthorized(
                f"{label} token was signed with a key that was rotated out and is no longer "
                f"accepted; {remedy}"
            )
        return key


def _checked_keys(kid: str, keys: Mapping[str, str], retired: Mapping[str, float]) -> _Keys:
    for key_id, key in keys.items():
        if len(key.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"JWT secret for kid {key_id!r} is shorter than {MIN_SECRET_BYTES} bytes; "
                "unset MODELHOST_JWT_SECRET to get a generated one, or use "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
    if kid in retired:
        raise ValueError(f"the current key id {kid!r} is marked retired")
    return _Keys(kid, keys[kid], dict(keys), dict(retired))


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the key file is replaced: inode, size, modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _decode(token: str, key: str, label: str, remedy: str) -> dict[str, Any]:
    try:
        return jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": _REQUIRED})
    except jwt.ExpiredSignatureError:
        reason = "expired"
    except jwt.InvalidSignatureError:
        reason = "has an invalid signature"
    except jwt.MissingRequiredClaimError as exc:
        reason = f"is missing the {exc.claim!r} claim"
    except jwt.ImmatureSignatureError:
        reason = "is not valid yet (check the clocks of client and server)"
    except jwt.InvalidAlgorithmError:
        reason = f"is not signed with {ALGORITHM}"
    except jwt.PyJWTError:
        reason = "is malformed"
    raise Unauthorized(f"{label} token {reason}; {remedy}")


def _to_claims(payload: dict[str, Any], label: str, remedy: str) -> Claims:
    typ = payload["typ"]
    model = {name: payload.get(name) for name in _MODEL_CLAIMS}
    if typ == "model" and any(value is None for value in model.values()):
        missing = ", ".join(name for name, value in model.items() if value is None)
        raise Unauthorized(f"{label} token is missing claim(s) {missing}; {remedy}")
    try:
        return Claims(
            sub=int(payload["sub"]),
            typ=typ,
            exp=float(payload["exp"]),
            jti=str(payload["jti"]),
            mid=None if model["mid"] is None else int(model["mid"]),
            pfx=None if model["pfx"] is None else str(model["pfx"]),
            mdl=None if model["mdl"] is None else str(model["mdl"]),
            iat=float(payload["iat"]),
            atk=None if payload.get("atk") is None else int(payload["atk"]),
            pjt=None if payload.get("pjt") is None else str(payload["pjt"]),
            fam=None if payload.get("fam") is None else str(payload["fam"]),
        )
    except (TypeError, ValueError):
        raise Unauthorized(f"{label} token has malformed claims; {remedy}") from None


def new_opaque_token() -> str:
    """A long-lived access token: shown to the admin once, stored only as `hash_opaque`."""
    return OPAQUE_PREFIX + secrets.token_urlsafe(32)


def hash_opaque(token: str) -> str:
    """SHA-256 hex of an opaque token; the token has 256 random bits, so no salt is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def unverified_expiry(token: str) -> float | None:
    """The `exp` of a JWT read without checking the signature, or None if there is none.

    For clients deciding whether a token is worth reusing; never for authorization.
    """
    try:
        payload = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    exp = payload.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
