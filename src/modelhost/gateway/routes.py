"""The in-memory route table: URL path → model, version and sub-path. No registry query per request.

Model URLs are `/{prefix...}/{model}/{version?}/{subpath?}` where the prefix may span several
segments and `version` is `v3` or `3`. A segment that looks like a version is taken as one only
when the rest is empty or is itself an API path (`v1/...`), so `/p/m/v1/chat/completions`
is the versionless model's OpenAI route while `/p/m/v1/` is version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelhost.gateway.traffic import TrafficSplit
from modelhost.supervision.supervisor import VersionWorkers


@dataclass
class ModelEntry:
    model_id: int
    prefix: str
    name: str
    deployment: str
    versions: dict[int, VersionWorkers] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    # Traffic policy (from the registry, changed by the admin API): a pinned version serves
    # alone once it is ready; else, when `weighted`, ready versions with a weight > 0 share
    # the versionless URL; else the newest ready one serves.
    pinned: int = 0
    weighted: bool = False
    weights: dict[int, int] = field(default_factory=dict)
    # What the versionless URL serves: one version (`serving`), or `split` across several
    # (then `serving` is the heaviest, for meta). Kept current by `refresh` so requests need
    # not compute it; `generation` counts refreshes (cached response headers follow it).
    serving: VersionWorkers | None = None
    split: TrafficSplit | None = None
    generation: int = 0
    # At start-up: the version that served before the restart (the newest one not failed).
    # Until it is ready or has failed, no older version serves the versionless URL (that
    # would be a silent rollback); 0 = no such hold.
    hold_for: int = 0

    def refresh(self) -> None:
        self.generation += 1
        self.split = None
        pinned = self.versions.get(self.pinned) if self.pinned else None
        if pinned is not None and pinned.state == "ready":
            self.serving = pinned  # until it is ready, what served before keeps serving
            return
        if self.weighted and self._refresh_split():
            return
        ready = self.latest_ready()
        if self.hold_for:
            held = self.versions.get(self.hold_for)
            if held is None or held.state != "loading":
                self.hold_for = 0  # settled: ready serves, failed falls back to an older one
            elif ready is not None and ready.info.version < self.hold_for:
                ready = None  # the newer version is still loading: 503, not a rollback
        self.serving = ready or self.latest()

    def _refresh_split(self) -> bool:
        """Weighted traffic among the ready versions with a weight; False if there are none
        (then the newest ready version serves, as without weights)."""
        shares = [
            (workers, self.weights.get(number, 0))
            for number, workers in sorted(self.versions.items())
            if workers.state == "ready" and self.weights.get(number, 0) > 0
        ]
        if not shares:
            return False
        self.serving = max(shares, key=lambda share: share[1])[0]
        if len(shares) > 1:
            self.split = TrafficSplit(shares)
        return True

    def latest_ready(self) -> VersionWorkers | None:
        for number in sorted(self.versions, reverse=True):
            workers = self.versions[number]
            if workers.state == "ready":
                return workers
        return None

    def latest(self) -> VersionWorkers | None:
        return self.versions[max(self.versions)] if self.versions else None


@dataclass(frozen=True, slots=True)
class Match:
    entry: ModelEntry
    version: int | None
    subpath: str


def _version_number(segment: str) -> int | None:
    digits = segment[1:] if segment[:1] in ("v", "V") else segment
    # isascii: str.isdigit() is true for '²', which int() refuses (a 500 found by fuzzing)
    return int(digits) if digits.isascii() and digits.isdigit() else None


class RouteTable:
    def __init__(self) -> None:
        self._by_key: dict[str, ModelEntry] = {}
        self._by_id: dict[int, ModelEntry] = {}
        self._prefixes: set[str] = set()
        # path -> Match: clients call the same few URLs over and over
        self._memo: dict[str, Match | None] = {}

    def add(self, entry: ModelEntry) -> ModelEntry:
        key = f"{entry.prefix}/{entry.name}"
        existing = self._by_key.get(key)
        if existing is not None:
            existing.deployment = entry.deployment
            return existing
        self._by_key[key] = entry
        self._by_id[entry.model_id] = entry
        self._memo.clear()
        self._prefixes.add(entry.prefix)
        return entry

    def by_id(self, model_id: int) -> ModelEntry | None:
        return self._by_id.get(model_id)

    def entries(self) -> list[ModelEntry]:
        return list(self._by_key.values())

    def has_prefix(self, prefix: str) -> bool:
        return prefix in self._prefixes

    def resolve(self, path: str) -> Match | None:
        try:
            return self._memo[path]
        except KeyError:
            pass
        match = self._resolve(path)
        if match is not None:  # unknown paths are not remembered: anyone can send many
            if len(self._memo) >= 10_000:
                self._memo.clear()
            self._memo[path] = match
        return match

    def _resolve(self, path: str) -> Match | None:
        segments = path.strip("/").split("/")
        by_key = self._by_key
        for i in range(1, len(segments)):
            entry = by_key.get("/".join(segments[: i + 1]))
            if entry is not None:
                return _split_rest(entry, segments[i + 1 :])
        return None


def _split_rest(entry: ModelEntry, rest: list[str]) -> Match:
    if rest and rest[-1] == "":
        rest = rest[:-1]
    if rest:
        number = _version_number(rest[0])
        if number is not None and (len(rest) == 1 or rest[1][:1] in ("v", "V")):
            return Match(entry, number, "/".join(rest[1:]))
    return Match(entry, None, "/".join(rest))
