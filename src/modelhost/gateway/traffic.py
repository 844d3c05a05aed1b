"""How the versionless URL splits its requests across versions by weight.

`ModelEntry.refresh` builds a `TrafficSplit` whenever the versions, their states or the
weights change, so a request costs one `random()` and one bisect over a cumulative table of
two or three entries. A client that sends `SESSION_HEADER` is sticky instead: the key is
hashed onto the same table, so it lands on the same version for as long as the weights and
the set of ready versions stay the same (across gateway restarts too: the hash is not
Python's per-process `hash`).
"""

from __future__ import annotations

from bisect import bisect_right
from hashlib import blake2b
from itertools import accumulate
from random import random

from modelhost.supervision.supervisor import VersionWorkers

SESSION_HEADER = b"x-prt-session-key"


class TrafficSplit:
    """Ready versions with their weights (> 0), as a cumulative table."""

    __slots__ = ("bounds", "total", "versions")

    def __init__(self, shares: list[tuple[VersionWorkers, int]]) -> None:
        self.versions = [workers for workers, _ in shares]
        self.bounds = list(accumulate(weight for _, weight in shares))
        self.total = self.bounds[-1]

    def pick(self, session_key: bytes | None = None) -> VersionWorkers:
        if session_key:
            digest = blake2b(session_key, digest_size=8).digest()
            point: float = int.from_bytes(digest, "big") % self.total
        else:
            point = random() * self.total
        return self.versions[bisect_right(self.bounds, point)]

    def shares(self) -> dict[int, int]:
        """Version number -> weight, for meta."""
        low = 0
        out = {}
        for workers, high in zip(self.versions, self.bounds, strict=True):
            out[workers.info.version] = high - low
            low = high
        return out


def session_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The client's session key, if it sent one (read only when a split is in force)."""
    for name, value in headers:
        if name == SESSION_HEADER:
            return value
    return None
