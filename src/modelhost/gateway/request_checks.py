"""Small, pure checks the hot path makes on a request line and its headers.

Each is cheap on the common case: an empty query string is not parsed at all, and a
content-type already seen valid is a set lookup.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MODEL_METHODS = frozenset({"GET", "POST"})
ALLOW = "GET, POST"

_TRUE = frozenset({"true", "1"})

# RFC 9110 §8.3.1: type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_MEDIA_TYPE = re.compile(
    rb"[ \t]*"
    + _TOKEN
    + rb"/"
    + _TOKEN
    # OWS after ";" belongs to the optional parameter, so runs of blanks have one parse:
    # no backtracking blow-up on hostile values.
    + rb"(?:[ \t]*;(?:[ \t]*"
    + _TOKEN
    + rb"=(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*[ \t]*"
)
_valid_media_types: set[bytes] = set()


def wants_meta(query: bytes) -> bool:
    """True when the query string has a `get_meta` parameter whose value is true or 1
    (any case). Parameters are split on `&` and percent/plus-decoded like a form:
    `?x=get_meta=true` is parameter `x`, not `get_meta`."""
    if b"get_meta" not in query and b"%" not in query:
        return False  # the common case: no such parameter can be there
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%" in pair or b"+" in pair:
            name_s = unquote_plus(name.decode("latin-1"))
            value_s = unquote_plus(value.decode("latin-1"))
        else:
            name_s = name.decode("latin-1")
            value_s = value.decode("latin-1")
        if name_s == "get_meta":
            return value_s.strip().lower() in _TRUE
    return False


def is_media_type(value: bytes) -> bool:
    """Whether a Content-Type header value parses as `type/subtype[; name=value]...`."""
    if value in _valid_media_types:
        return True
    if _MEDIA_TYPE.fullmatch(value) is None:
        return False
    if len(_valid_media_types) < 256:  # clients send the same few; anyone can send many
        _valid_media_types.add(value)
    return True
