"""Password hashing: matches, mismatches and garbage never raise."""

from __future__ import annotations

from argon2 import PasswordHasher

from modelhost.auth import hash_password, needs_rehash, verify_password


def test_hash_then_verify() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert verify_password(stored, "correct horse")


def test_wrong_password_is_false() -> None:
    assert not verify_password(hash_password("one"), "two")


def test_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_garbage_hash_is_false_not_an_exception() -> None:
    assert not verify_password("not-a-hash", "pw")
    assert not verify_password("", "pw")
    assert not verify_password("$argon2id$v=19$m=1,t=1,p=1$bad$bad", "pw")


def test_needs_rehash() -> None:
    assert not needs_rehash(hash_password("pw"))
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    assert verify_password(weak, "pw")
    assert needs_rehash(weak)
    assert needs_rehash("not-a-hash")
