"""Authentication primitives: password hashing and token issue/verification.

Policy (who may call what) lives in the gateway; this package only answers "is this
credential genuine, and what does it say?".
"""

from modelhost.auth.passwords import hash_password, needs_rehash, verify_password
from modelhost.auth.tokens import (
    ALGORITHM,
    Claims,
    TokenService,
    TokenType,
    hash_opaque,
    new_opaque_token,
    unverified_expiry,
)

__all__ = [
    "ALGORITHM",
    "Claims",
    "TokenService",
    "TokenType",
    "hash_opaque",
    "hash_password",
    "needs_rehash",
    "new_opaque_token",
    "unverified_expiry",
    "verify_password",
]
