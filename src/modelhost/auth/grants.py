"""Who may use or deploy which model: grants to users and groups on prefixes or models.

Pure logic over an `AccessSnapshot` (admins, memberships, grants) read from the registry on
every revocation poll; answers are memoised per (user, prefix, model, need) until the next
snapshot, so the hot path pays one dict lookup.
"""

from __future__ import annotations

from typing import Literal

from modelhost.registry.rows import AccessSnapshot, GrantRow

Need = Literal["use", "deploy"]


def prefix_covers(scope: str, prefix: str) -> bool:
    """A grant or token on ``scope`` reaches ``prefix`` itself and every prefix below it."""
    return prefix == scope or prefix.startswith(scope + "/")


class GrantIndex:
    def __init__(self, snapshot: AccessSnapshot | None = None) -> None:
        self._snap = snapshot or AccessSnapshot(frozenset(), {}, ())
        self._memo: dict[tuple[int, str, int | None, str], bool] = {}

    def is_admin(self, user_id: int) -> bool:
        return user_id in self._snap.admin_ids

    def allows(self, user_id: int, prefix: str, model_id: int | None, need: Need) -> bool:
        """May ``user_id`` do ``need`` on model ``model_id`` under ``prefix``?

        ``model_id`` None asks about the prefix as a whole (deploying a new model there).
        `deploy` implies `use`. Admins may do everything.
        """
        key = (user_id, prefix, model_id, need)
        answer = self._memo.get(key)
        if answer is None:
            answer = self.is_admin(user_id) or any(
                self._matches(grant, prefix, model_id, need) for grant in self._grants_of(user_id)
            )
            self._memo[key] = answer
        return answer

    def _grants_of(self, user_id: int) -> list[GrantRow]:
        groups = self._snap.groups_of.get(user_id, frozenset())
        return [
            g
            for g in self._snap.grants
            if g.user_id == user_id or (g.group_id is not None and g.group_id in groups)
        ]

    @staticmethod
    def _matches(grant: GrantRow, prefix: str, model_id: int | None, need: Need) -> bool:
        if need == "deploy" and grant.permission != "deploy":
            return False
        if grant.model_id is not None:
            return model_id is not None and grant.model_id == model_id
        return grant.prefix_key is not None and prefix_covers(grant.prefix_key, prefix)
