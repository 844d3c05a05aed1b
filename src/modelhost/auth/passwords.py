"""Password hashing with argon2id.

Callers only ever ask "does this password match?", so `verify_password` answers with a
bool and never raises: a wrong password, a corrupt hash and a hash from another scheme
all mean "no". `needs_rehash` lets the login path upgrade old hashes after a successful
check when the argon2 parameters are raised.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# One hasher with argon2-cffi's current recommended parameters (RFC 9106 low-memory).
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """Hash a password for storage; the result embeds its own salt and parameters."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches `password_hash`; False on any mismatch or bad hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's, or is unreadable."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True
