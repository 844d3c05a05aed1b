"""The hot path's pure request checks: `get_meta` as a real query parameter, media types."""

from __future__ import annotations

import pytest

from modelhost.gateway.request_checks import is_media_type, wants_meta


@pytest.mark.parametrize(
    "query",
    [
        b"get_meta=true",
        b"get_meta=TRUE",
        b"get_meta=True",
        b"get_meta=1",
        b"a=1&get_meta=true",
        b"get_meta=true&a=1",
        b"get%5Fmeta=true",
        b"get_meta=tru%65",
    ],
)
def test_meta_is_asked_for(query: bytes) -> None:
    assert wants_meta(query)


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"x=get_meta=true",
        b"xget_meta=true",
        b"get_meta_x=true",
        b"get_meta=false",
        b"get_meta=0",
        b"get_meta=",
        b"get_meta",
        b"get_meta=truex",
        b"a=get_meta%3Dtrue",
        b"q=%zz",
    ],
)
def test_meta_is_not_asked_for(query: bytes) -> None:
    assert not wants_meta(query)


def test_the_first_get_meta_wins() -> None:
    assert not wants_meta(b"get_meta=false&get_meta=true")


@pytest.mark.parametrize(
    "value",
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json;charset=UTF-8",
        b'text/plain; a="quoted; \\" value"',
        b"application/vnd.api+json",
        b"a/b;;",
        b"a/b ; x=1 ;",
        b"multipart/form-data; boundary=----x",
    ],
)
def test_media_types(value: bytes) -> None:
    assert is_media_type(value)
    assert is_media_type(value)  # the second time from the cache of valid values


@pytest.mark.parametrize(
    "value",
    [
        b";;;==",
        b"json",
        b"",
        b"/json",
        b"application/",
        b"a/b/c",
        b"a/b; =x",
        b"a/b;x",
        b"a/b; x=",
        b'a/b; x="unterminated',
        b"a b/c",
        b"a/b\x00",
    ],
)
def test_not_media_types(value: bytes) -> None:
    assert not is_media_type(value)


@pytest.mark.parametrize(
    "value",
    [
        b"a/b;" + b" " * 60_000 + b"@",
        b"a/b" + b"; " * 30_000 + b"@",
        b"a/b" + b" ;" * 30_000 + b"@",
        b'a/b; x="' + b"a" * 60_000,
    ],
)
def test_hostile_values_are_refused_without_backtracking(value: bytes) -> None:
    # Linear in the length: a quadratic pattern would take minutes on 60 KB (the pytest
    # timeout catches that); no wall-clock assertion, this machine's speed varies.
    assert not is_media_type(value)
