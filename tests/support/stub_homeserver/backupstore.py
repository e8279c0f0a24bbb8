"""Server-side key backup (``/room_keys``): storage only, with the spec's replacement rule."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import MatrixError, invalid_param, not_found

JsonDict = dict[str, Any]


@dataclass
class BackupVersion:
    version: str
    algorithm: str
    auth_data: JsonDict
    rooms: dict[str, dict[str, JsonDict]] = field(default_factory=dict)
    etag: int = 0

    def count(self) -> int:
        return sum(len(sessions) for sessions in self.rooms.values())

    def info(self) -> JsonDict:
        return {
            "version": self.version, "algorithm": self.algorithm,
            "auth_data": copy.deepcopy(self.auth_data),
            "count": self.count(), "etag": str(self.etag),
        }


def _better(new: JsonDict, old: JsonDict) -> bool:
    """Whether ``new`` should replace ``old`` (verified, then lower index, then fewer hops)."""
    def rank(k: JsonDict) -> tuple[bool, int, int]:
        return (
            not k.get("is_verified", False),
            int(k.get("first_message_index", 0)),
            int(k.get("forwarded_count", 0)),
        )
    return rank(new) < rank(old)


class BackupStore:
    def __init__(self) -> None:
        self.versions: dict[str, dict[str, BackupVersion]] = {}
        self._counter = 0

    def create(self, user_id: str, body: JsonDict) -> str:
        if "algorithm" not in body or "auth_data" not in body:
            raise MatrixError(400, "M_BAD_JSON", "algorithm and auth_data are required")
        self._counter += 1
        version = str(self._counter)
        self.versions.setdefault(user_id, {})[version] = BackupVersion(
            version, body["algorithm"], copy.deepcopy(body["auth_data"])
        )
        return version

    def current(self, user_id: str) -> BackupVersion:
        versions = self.versions.get(user_id, {})
        if not versions:
            raise not_found("No backup found")
        return versions[max(versions, key=int)]

    def get(self, user_id: str, version: str | None) -> BackupVersion:
        if version is None:
            return self.current(user_id)
        backup = self.versions.get(user_id, {}).get(version)
        if backup is None:
            raise not_found(f"Unknown backup version {version}")
        return backup

    def update(self, user_id: str, version: str, body: JsonDict) -> None:
        backup = self.get(user_id, version)
        if body.get("version", version) != version:
            raise invalid_param("Version in body does not match")
        if body.get("algorithm", backup.algorithm) != backup.algorithm:
            raise invalid_param("Algorithm does not match")
        backup.auth_data = copy.deepcopy(body.get("auth_data", backup.auth_data))

    def delete(self, user_id: str, version: str) -> None:
        self.get(user_id, version)
        del self.versions[user_id][version]

    def for_write(self, user_id: str, version: str) -> BackupVersion:
        current = self.versions.get(user_id, {})
        latest = max(current, key=int) if current else None
        if version != latest:
            raise MatrixError(
                403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version.",
                current_version=latest,
            )
        return current[version]

    def put_keys(self, backup: BackupVersion, rooms: dict[str, dict[str, JsonDict]]) -> None:
        changed = False
        for room_id, sessions in rooms.items():
            stored = backup.rooms.setdefault(room_id, {})
            for session_id, key in sessions.items():
                old = stored.get(session_id)
                if old is None or _better(key, old):
                    stored[session_id] = copy.deepcopy(key)
                    changed = True
        if changed:
            backup.etag += 1

    def delete_keys(
        self, backup: BackupVersion, room_id: str | None, session_id: str | None
    ) -> None:
        if room_id is None:
            backup.rooms.clear()
        elif session_id is None:
            backup.rooms.pop(room_id, None)
        else:
            backup.rooms.get(room_id, {}).pop(session_id, None)
        backup.etag += 1
